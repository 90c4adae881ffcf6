//! `vessel image`: create, check and describe disk images (raw files and copy-on-write
//! overlays in Vessel's `VSLCOW01` format, `docs/formats.md`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use vmm::image::{self, cow, Format};

#[derive(Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    command: ImageCommand,
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Create a raw image, or with --backing a copy-on-write overlay whose unwritten clusters
    /// read from BASE (which Vessel only ever opens read-only). Never replaces an existing file.
    Create(CreateArgs),
    /// Check an image: header, allocation bitmap against the file's size, backing image present
    /// and covering what it did when the overlay was made. Exit status 1 on any problem.
    Check {
        /// The image.
        file: PathBuf,
    },
    /// Describe an image: format, virtual size, allocated clusters, backing image.
    Info {
        /// The image.
        file: PathBuf,
    },
}

#[derive(Args)]
struct CreateArgs {
    /// Base image for a copy-on-write overlay (raw or itself an overlay); stored as an
    /// absolute path.
    #[arg(long, value_name = "BASE")]
    backing: Option<PathBuf>,
    /// Virtual size with a K, M or G suffix (no suffix: MiB); default with --backing: BASE's
    /// size.
    #[arg(long, value_parser = parse_image_size)]
    size: Option<u64>,
    /// The image to create.
    file: PathBuf,
}

fn parse_image_size(s: &str) -> Result<u64, String> {
    vmm::parse_size(s).map_err(|e| e.to_string())
}

pub fn image(args: ImageArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ImageCommand::Create(c) => create(c),
        ImageCommand::Check { file } => check(&file),
        ImageCommand::Info { file } => info(&file),
    }
}

fn create(args: CreateArgs) -> anyhow::Result<ExitCode> {
    match &args.backing {
        Some(base) => {
            let h = cow::create(&args.file, Some(base), args.size)?;
            println!(
                "created overlay {}: virtual size {}, backing {}",
                args.file.display(),
                human(h.virtual_size),
                h.backing.as_deref().unwrap_or(base).display()
            );
        }
        None => {
            let size = args
                .size
                .context("--size is needed for a raw image (or give --backing)")?;
            image::create_raw(&args.file, size)?;
            println!("created raw image {}: {}", args.file.display(), human(size));
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

/// Prints the summary of an overlay; returns its report.
fn describe(file: &Path) -> anyhow::Result<Option<cow::Report>> {
    match image::probe(file)? {
        Format::Raw => {
            let len = std::fs::metadata(file)
                .with_context(|| format!("{}: cannot read its size", file.display()))?
                .len();
            println!("{}: raw image", file.display());
            println!("virtual size: {}", human(len));
            Ok(None)
        }
        Format::Cow => {
            let r = cow::inspect(file)?;
            let h = &r.header;
            println!("{}: {} image", file.display(), Format::Cow);
            println!("virtual size: {}", human(h.virtual_size));
            println!("cluster size: {}", cow::CLUSTER_SIZE);
            println!("clusters allocated: {} of {}", r.allocated, h.clusters());
            match (&h.backing, &r.backing_resolved) {
                (Some(stored), Some(resolved)) => println!(
                    "backing file: {} ({}; {} bytes when the overlay was made)",
                    stored.display(),
                    if resolved.exists() {
                        format!("{} present", resolved.display())
                    } else {
                        format!("{} MISSING", resolved.display())
                    },
                    h.backing_size
                ),
                _ => println!("backing file: none (unallocated clusters read as zeros)"),
            }
            println!("file size: {} bytes", r.file_size);
            Ok(Some(r))
        }
    }
}

fn info(file: &Path) -> anyhow::Result<ExitCode> {
    if let Some(r) = describe(file)? {
        for p in &r.problems {
            println!("problem: {p}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn check(file: &Path) -> anyhow::Result<ExitCode> {
    match describe(file)? {
        None => println!("raw image: no metadata to check"),
        Some(r) if r.problems.is_empty() => println!("no errors found"),
        Some(r) => {
            for p in &r.problems {
                eprintln!("vessel: error: {}: {p}", file.display());
            }
            eprintln!(
                "vessel: error: {}: {} problem(s) found",
                file.display(),
                r.problems.len()
            );
            return Ok(ExitCode::from(1));
        }
    }
    Ok(ExitCode::SUCCESS)
}
