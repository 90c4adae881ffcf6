//! `vessel image`: create, check, describe and convert disk images (raw files or block
//! devices, and qcow2; `docs/formats.md`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use vmm::image::{self, convert, cow, qcow2, qcow2_check, Format};

#[derive(Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    command: ImageCommand,
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Create a raw image (--format raw, the default without --backing), or a qcow2 image
    /// (--format qcow2), which with --backing is a copy-on-write overlay whose unwritten
    /// clusters read from BASE (which Vessel only ever opens read-only). Never replaces an
    /// existing file.
    Create(CreateArgs),
    /// Check an image: for qcow2, the header, every table and every refcount, and the backing
    /// chain opened exactly as a domain opens it. Exit status 1 on any problem.
    Check(InspectArgs),
    /// Describe an image: format, virtual size, allocated clusters, backing image.
    Info(InspectArgs),
    /// Copy the disk an image holds into a new raw or qcow2 image (flattening a backing
    /// chain); reads the retired VSLCOW01 overlays of earlier Vessel versions.
    Convert(ConvertArgs),
}

#[derive(Args)]
struct CreateArgs {
    /// raw or qcow2 [default: qcow2 with --backing, else raw].
    #[arg(long, value_parser = parse_disk_format)]
    format: Option<Format>,
    /// Base image of a qcow2 overlay; stored as an absolute path.
    #[arg(long, value_name = "BASE")]
    backing: Option<PathBuf>,
    /// The base's format, recorded in the overlay (raw or qcow2) [default: found from BASE's
    /// first bytes, now, once].
    #[arg(long, value_parser = parse_disk_format, requires = "backing")]
    backing_format: Option<Format>,
    /// Virtual size with a K, M or G suffix (no suffix: MiB); default with --backing: BASE's
    /// size.
    #[arg(long, value_parser = parse_image_size)]
    size: Option<u64>,
    /// The image to create.
    file: PathBuf,
}

#[derive(Args)]
struct InspectArgs {
    /// The image's format (raw, qcow2, or vslcow for the retired overlays) [default: found
    /// from its first bytes].
    #[arg(long, value_parser = parse_any_format)]
    format: Option<Format>,
    /// The image.
    file: PathBuf,
}

#[derive(Args)]
struct ConvertArgs {
    /// The new image's format: qcow2 or raw.
    #[arg(long, value_parser = parse_disk_format, default_value = "qcow2")]
    format: Format,
    /// The source's format (raw, qcow2 or vslcow) [default: found from its first bytes].
    #[arg(long, value_parser = parse_any_format)]
    source_format: Option<Format>,
    /// The image to read.
    source: PathBuf,
    /// The image to create (it must not exist).
    dest: PathBuf,
}

fn parse_image_size(s: &str) -> Result<u64, String> {
    vmm::parse_size(s).map_err(|e| e.to_string())
}

fn parse_disk_format(s: &str) -> Result<Format, String> {
    Format::from_name(s)
        .filter(|f| Format::DISK_FORMATS.contains(f))
        .ok_or_else(|| format!("'{s}' is not raw or qcow2"))
}

fn parse_any_format(s: &str) -> Result<Format, String> {
    Format::from_name(s).ok_or_else(|| format!("'{s}' is not raw, qcow2 or vslcow"))
}

pub fn image(args: ImageArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ImageCommand::Create(c) => create(c),
        ImageCommand::Check(a) => check(&a),
        ImageCommand::Info(a) => info(&a),
        ImageCommand::Convert(c) => convert_image(c),
    }
}

fn create(args: CreateArgs) -> anyhow::Result<ExitCode> {
    let format = args.format.unwrap_or(if args.backing.is_some() {
        Format::Qcow2
    } else {
        Format::Raw
    });
    match (format, &args.backing) {
        (Format::Raw, Some(_)) => {
            anyhow::bail!("a raw image has no backing file: use --format qcow2 with --backing")
        }
        (Format::Raw, None) => {
            let size = args
                .size
                .context("--size is needed for a raw image (or give --backing)")?;
            image::create_raw(&args.file, size)?;
            println!("created raw image {}: {}", args.file.display(), human(size));
        }
        (_, backing) => {
            let backing = match backing {
                None => None,
                Some(base) => {
                    let base_format = match args.backing_format {
                        Some(f) => f,
                        None => image::probe_disk(base)?,
                    };
                    Some((base.as_path(), base_format))
                }
            };
            let made = qcow2::create(&args.file, args.size, backing)?;
            print!(
                "created qcow2 image {}: virtual size {}",
                args.file.display(),
                human(made.virtual_size)
            );
            match &made.backing {
                Some((path, format)) => {
                    println!(", backing {} (format {format})", path.display())
                }
                None => println!(),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn human(bytes: u64) -> String {
    let unit = [(30, "GiB"), (20, "MiB"), (10, "KiB")]
        .into_iter()
        .find(|&(shift, _)| bytes >= 1 << shift && bytes.is_multiple_of(1 << shift));
    match unit {
        Some((shift, name)) => format!("{bytes} bytes ({} {name})", bytes >> shift),
        None => format!("{bytes} bytes"),
    }
}

/// Prints what an image is; returns the problems found (for `check`).
fn describe(args: &InspectArgs) -> anyhow::Result<Vec<String>> {
    let file = &args.file;
    let format = match args.format {
        Some(f) => f,
        None => image::probe(file)?,
    };
    match format {
        Format::Raw => {
            let disk = image::open(file, Format::Raw, true)?;
            println!("{}: raw image", file.display());
            println!("virtual size: {}", human(disk.len()));
            if disk.block_size() != 512 {
                println!("logical block size: {}", disk.block_size());
            }
            Ok(Vec::new())
        }
        Format::Qcow2 => describe_qcow2(file),
        Format::VesselCow => {
            let r = cow::inspect(file)?;
            let h = &r.header;
            println!(
                "{}: vslcow image (Vessel's retired VSLCOW01 overlay format: \
                 `vessel image convert` makes a qcow2 image of it)",
                file.display()
            );
            println!("virtual size: {}", human(h.virtual_size));
            println!("cluster size: {}", cow::CLUSTER_SIZE);
            println!("clusters allocated: {} of {}", r.allocated, h.clusters());
            match &r.backing_resolved {
                Some(resolved) => println!("backing file: {}", resolved.display()),
                None => println!("backing file: none"),
            }
            println!("file size: {} bytes", r.file_size);
            Ok(r.problems)
        }
    }
}

fn describe_qcow2(file: &Path) -> anyhow::Result<Vec<String>> {
    let f = vmm::image::open_for_inspection(file)?;
    let r = qcow2_check::check(&f).map_err(|why| anyhow::anyhow!("{}: {why}", file.display()))?;
    let h = &r.header;
    let mut problems = r.problems.clone();
    println!("{}: qcow2 image (version {})", file.display(), h.version);
    println!("virtual size: {}", human(h.size));
    println!("cluster size: {}", h.cluster_size());
    println!(
        "clusters allocated: {} of {}",
        r.allocated,
        h.guest_clusters()
    );
    match &h.backing_file {
        None => println!("backing file: none (unallocated clusters read as zeros)"),
        Some(stored) => {
            let state = match qcow2::backing_format(file, h.backing_format.as_deref()) {
                Err(e) => {
                    problems.push(e.to_string());
                    "format not usable".to_string()
                }
                Ok(format) => {
                    let backing = qcow2::Backing {
                        stored: stored.clone(),
                        path: qcow2::resolve_backing(file, stored),
                        format,
                    };
                    match qcow2::check_backing(file, &backing) {
                        Ok(_) => format!("format {format}, {} present", backing.path.display()),
                        Err(e) => {
                            problems.push(e.to_string());
                            format!("format {format}, {} UNUSABLE", backing.path.display())
                        }
                    }
                }
            };
            println!("backing file: {stored} ({state})");
        }
    }
    if h.snapshots > 0 {
        println!("internal snapshots: {}", h.snapshots);
    }
    if !r.refcounts_checked {
        println!("refcounts: not compared (file too large, or persistent bitmaps present)");
    }
    if r.leaked > 0 {
        println!(
            "leaked clusters: {} (space never reused; harmless, `qemu-img check -r leaks` reclaims it)",
            r.leaked
        );
    }
    println!("file size: {} bytes", r.file_size);
    Ok(problems)
}

fn info(args: &InspectArgs) -> anyhow::Result<ExitCode> {
    for p in describe(args)? {
        println!("problem: {p}");
    }
    Ok(ExitCode::SUCCESS)
}

fn check(args: &InspectArgs) -> anyhow::Result<ExitCode> {
    let problems = describe(args)?;
    let file = args.file.display();
    if problems.is_empty() {
        println!("no errors found");
        return Ok(ExitCode::SUCCESS);
    }
    for p in &problems {
        eprintln!("vessel: error: {file}: {p}");
    }
    eprintln!("vessel: error: {file}: {} problem(s) found", problems.len());
    Ok(ExitCode::from(1))
}

fn convert_image(args: ConvertArgs) -> anyhow::Result<ExitCode> {
    let source_format = match args.source_format {
        Some(f) => f,
        None => image::probe(&args.source)?,
    };
    let done = convert::convert(&args.source, source_format, &args.dest, args.format)?;
    println!(
        "converted {} ({source_format}) to {} ({}): virtual size {}, {} of data",
        args.source.display(),
        args.dest.display(),
        args.format,
        human(done.virtual_size),
        human(done.data_bytes)
    );
    Ok(ExitCode::SUCCESS)
}
