//! `vessel`: the command-line front end of the Vessel VMM.
//!
//! `vessel run` boots one domain in the foreground with its serial console on the terminal.
//! This crate parses arguments, wires standard I/O to the console and turns outcomes into exit
//! codes; the machine itself lives in the `vmm` crate.
#![forbid(unsafe_code)]

mod client;
mod daemon;
mod diskcli;
mod image;
mod logging;
mod memcli;
mod migratecli;
mod netcli;
mod run;
mod schedcli;
mod selfdoc;
mod table;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
/// The daemon API's HTTP subset lives in the package's library (`lib.rs`), so the fuzz targets
/// can reach it; the binary's modules use it as `crate::http`.
use vessel::http;

/// Vessel: a virtual machine monitor on Linux KVM.
#[derive(Parser)]
#[command(name = "vessel", version, about)]
struct Cli {
    /// The daemon's API socket (for the verbs that talk to `vessel daemon`).
    #[arg(long, global = true, env = "VESSEL_SOCKET", default_value = daemon::DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot one domain in the foreground; its serial console is this terminal.
    ///
    /// Exit status: 0 when the guest powers off, 2 when it reboots under --on-reboot exit,
    /// 1 when the configuration is bad, the host cannot run it, or the guest crashes.
    /// Press Ctrl-A then x to stop the domain from the console. SIGTERM or SIGINT presses the
    /// guest's ACPI power button; a second one, or --shutdown-timeout without a power-off,
    /// stops the domain (exit status 1).
    Run(run::RunArgs),
    /// Create, check, describe and convert disk images: raw files or block devices, and qcow2
    /// (copy-on-write overlays on a shared base image among them).
    Image(image::ImageArgs),
    /// Run domain 0: the daemon that hosts domains and serves the API on a Unix socket.
    Daemon(daemon::DaemonArgs),
    /// Define a domain on the daemon and start it (a JSON file, or `vessel run`'s flags).
    Create(client::CreateArgs),
    /// List the daemon's domains.
    List(client::ListArgs),
    /// Attach to a domain's serial console (Ctrl-] detaches).
    Console(client::ConsoleArgs),
    /// Live CPU, memory and I/O of every domain.
    Top(client::TopArgs),
    /// The host and what runs on it, as `xl info`: CPUs, memory, kernel, KVM, the daemon's
    /// version and uptime, domains by state, memory given to them.
    HostInfo(client::ListArgs),
    /// Memory: the host's (free state, memory given to domains, what page sharing saves) and
    /// every running domain's (target, balloon, resident, shared, the guest's free memory).
    Mem(client::ListArgs),
    /// CPU scheduling: every domain's weight, cap and warp with its measured share, or one
    /// domain's; with flags, change them on a running domain (kept in its definition).
    Sched(schedcli::SchedArgs),
    /// A domain's disks, and their rate limits changed while it runs.
    #[command(subcommand)]
    Disk(diskcli::DiskCommand),
    /// The daemon's virtual switch: ports, firewall rules, default policy.
    #[command(subcommand)]
    Net(netcli::NetCommand),
    #[command(flatten)]
    Domain(client::DomainVerb),
    /// Bring back a domain `vessel save` saved: it runs on from where it was (its programs,
    /// its clock moved on by the time it spent saved), as `xl restore`.
    Restore(client::RestoreArgs),
    /// Move a running domain to another daemon while it runs (pre-copy of its memory, then
    /// a pause of about --downtime for the rest); the other daemon must be awaiting it
    /// (`vessel migrate-receive`). If anything fails the domain runs on here.
    Migrate(migratecli::MigrateArgs),
    /// Await one domain `vessel migrate` sends from another daemon, and run it here (the
    /// call returns once it runs). Its disks must be at the same paths here.
    MigrateReceive(migratecli::MigrateReceiveArgs),
    /// Print the shell completion script for SHELL (e.g. `vessel completions bash >
    /// /etc/bash_completion.d/vessel`).
    Completions(selfdoc::CompletionsArgs),
    /// Print the manual page (`vessel man | man -l -`), or write one per verb with --dir.
    Man(selfdoc::ManArgs),
    /// A domain process (started by the daemon, which hands it its channel as descriptor 3).
    #[command(name = control::DOMAIN_VERB, hide = true)]
    DomainProcess,
    /// One raw API call: prints the answer's body; exit status 1 unless it is 2xx (for
    /// scripts; the verbs above are friendlier).
    #[command(hide = true)]
    Api {
        /// GET, POST, PUT or DELETE.
        method: String,
        /// The path, e.g. /v1/domains/web.
        path: String,
        /// A JSON body.
        body: Option<String>,
    },
}

/// The verbs that do not talk to the daemon, so do not take its `--socket`. (`daemon` has a
/// `--socket` of its own: where it serves.)
const SOCKETLESS_VERBS: [&str; 5] = ["run", "image", "completions", "man", control::DOMAIN_VERB];

/// The command line's definition: [`Cli`]'s, with the global `--socket` kept out of the help
/// (and refused) where the verb does not use it. (A verb that has an argument of the same id
/// does not get the global one; its own is hidden and refuses any value.)
fn command() -> clap::Command {
    let mut cmd = Cli::command();
    for verb in SOCKETLESS_VERBS {
        cmd = cmd.mut_subcommand(verb, |c| {
            c.arg(
                clap::Arg::new("socket")
                    .long("socket")
                    .hide(true)
                    .value_parser(|_: &str| {
                        Err::<PathBuf, _>("this verb does not talk to the daemon".to_string())
                    }),
            )
        });
    }
    cmd
}

fn main() -> ExitCode {
    let parsed = command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) => {
            // Usage errors exit 2, but 1 for `run`, where 2 means "the guest rebooted"; --help
            // and --version exit 0. A value that does not parse (a size, a --disk or --net
            // string) is bad input like a value out of range: one line, as every other error.
            match e.kind() {
                ErrorKind::ValueValidation | ErrorKind::InvalidValue => {
                    // Clap's message up to its tips, on one line (with the possible values of
                    // an enum, if it lists them).
                    let text = e.to_string();
                    let message: Vec<&str> = text
                        .lines()
                        .take_while(|l| !l.trim().is_empty())
                        .map(str::trim)
                        .collect();
                    let message = message.join(" ");
                    eprintln!("vessel: error: {}", message.trim_start_matches("error: "));
                }
                _ => {
                    let _ = e.print();
                }
            }
            return match (e.use_stderr(), verb_of(std::env::args().skip(1)).as_deref()) {
                (false, _) => ExitCode::SUCCESS,
                (true, Some("run")) => ExitCode::from(1),
                (true, _) => ExitCode::from(2),
            };
        }
    };
    let socket = cli.socket;
    if !matches!(cli.command, Command::Run(_) | Command::Daemon(_)) {
        // A client verb whose output goes to a pipe that closes early (`| grep -q`, `| head`)
        // ends quietly instead of failing on the write. (Not `run` and `daemon`: they write
        // to sockets whose peers may go away.)
        hv::default_sigpipe();
    }
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Image(args) => image::image(args),
        Command::Daemon(args) => daemon::daemon(args),
        Command::Create(args) => client::create(&socket, args),
        Command::List(args) => client::list(&socket, args),
        Command::Console(args) => client::console(&socket, args),
        Command::Top(args) => client::top(&socket, args),
        Command::HostInfo(args) => client::host_info(&socket, args),
        Command::Mem(args) => memcli::mem(&socket, args),
        Command::Disk(command) => diskcli::disk(&socket, command),
        Command::Net(command) => netcli::net(&socket, command),
        Command::Sched(args) => schedcli::sched(&socket, args),
        Command::Domain(verb) => client::domain_verb(&socket, verb),
        Command::Restore(args) => client::restore(&socket, args),
        Command::Migrate(args) => migratecli::migrate(&socket, args),
        Command::MigrateReceive(args) => migratecli::migrate_receive(&socket, args),
        Command::DomainProcess => domain_process(),
        Command::Completions(args) => selfdoc::completions(command(), args),
        Command::Man(args) => selfdoc::man(command(), args),
        Command::Api { method, path, body } => {
            client::call(&socket, &method, &path, body.as_deref().map(str::as_bytes)).map(|v| {
                match v {
                    serde_json::Value::String(text) => print!("{text}"),
                    v => println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default()),
                }
                ExitCode::SUCCESS
            })
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vessel: error: {}", one_line(&e));
            ExitCode::from(1)
        }
    }
}

/// The verb of a command line (its arguments after the program's name): the first argument
/// that is not an option, skipping the value of the global `--socket`.
fn verb_of(mut args: impl Iterator<Item = String>) -> Option<String> {
    while let Some(arg) = args.next() {
        if arg == "--socket" {
            args.next();
        } else if !arg.starts_with('-') {
            return Some(arg);
        }
    }
    None
}

/// `vessel domain`: serves the domain process on the channel the daemon handed over.
fn domain_process() -> anyhow::Result<ExitCode> {
    logging::init();
    let fd = hv::process::take_channel_fd().ok_or_else(|| {
        anyhow::anyhow!("the domain verb is for the daemon: no channel on descriptor 3")
    })?;
    let code = vmm::domain_process::serve(hv::channel::Listener::from_fd(fd));
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// The error and its causes on one line, skipping causes whose text the message already holds.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::verb_of;

    fn verb(line: &str) -> Option<String> {
        verb_of(line.split_whitespace().map(String::from))
    }

    #[test]
    fn the_verb_is_the_first_word_that_is_not_an_option_or_the_socket() {
        assert_eq!(verb("run --kernel k").as_deref(), Some("run"));
        assert_eq!(verb("--socket /run/x.sock list").as_deref(), Some("list"));
        assert_eq!(verb("--socket run create").as_deref(), Some("create"));
        assert_eq!(verb("--help").as_deref(), None);
    }
}
