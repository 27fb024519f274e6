//! `meshgate validate PATH`: run the configuration pipeline (load, validate, registry,
//! translate and the data plane's serve check, for every gateway workload the Gateways
//! select) and print one line per problem.
//!
//! Exit codes: 0 no errors (warnings allowed), 1 errors found, 2 could not run.
use clap::ValueEnum;
use meshgate::pipeline;
use std::path::PathBuf;
use std::process::ExitCode;

/// How diagnostics are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// `file:line:column: error|warning: Kind/ns/name: field: message`, one per line.
    Text,
    /// A JSON array of diagnostics.
    Json,
}

/// Arguments of `meshgate validate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A YAML/JSON file, or a directory searched recursively for .yaml, .yml and .json files.
    pub path: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Istio MeshConfig (YAML) to check as well, as the control plane and the gateway
    /// read it with --mesh-config.
    #[arg(long, value_name = "FILE")]
    pub mesh_config: Option<PathBuf>,
    /// A gateway's own ProxyConfig (YAML or JSON, as `--proxy-config` of the gateway,
    /// `translate` and `bootstrap envoy`), checked and laid over the mesh's
    /// `defaultConfig` for translation.
    #[arg(long, value_name = "FILE")]
    pub proxy_config: Option<PathBuf>,
}

/// Runs the subcommand.
pub fn run(args: Args) -> ExitCode {
    if let Err(e) = std::fs::metadata(&args.path) {
        eprintln!(
            "meshgate validate: cannot read {}: {e}",
            args.path.display()
        );
        return ExitCode::from(2);
    }
    if args.path.is_dir()
        && let Err(e) = std::fs::read_dir(&args.path)
    {
        eprintln!(
            "meshgate validate: cannot read directory {}: {e}",
            args.path.display()
        );
        return ExitCode::from(2);
    }
    // The whole pipeline: what passes here, a gateway serves.
    // With a mesh configuration, translation follows it (its errors come first).
    let mut mesh_errors = Vec::new();
    let mut options = pipeline::Options::all_gateways();
    match args
        .mesh_config
        .as_deref()
        .map(meshgate::config::mesh::load_mesh_config)
    {
        Some(Ok(mesh)) => options.mesh = std::sync::Arc::new(mesh),
        Some(Err(errors)) => mesh_errors = errors,
        None => {}
    }
    match args
        .proxy_config
        .as_deref()
        .map(meshgate::config::mesh::load_proxy_config)
    {
        Some(Ok(pc)) => options.mesh = std::sync::Arc::new(options.mesh.with_proxy_config(&pc)),
        Some(Err(errors)) => mesh_errors.extend(errors),
        None => {}
    }
    let report = pipeline::run(&args.path, &options);
    let mut diagnostics = report.diagnostics;
    diagnostics.splice(0..0, mesh_errors);

    match args.output {
        Output::Text => {
            for d in &diagnostics {
                println!("{d}");
            }
        }
        Output::Json => match serde_json::to_string_pretty(&diagnostics) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("meshgate validate: cannot render JSON: {e}");
                return ExitCode::from(2);
            }
        },
    }
    let errors = diagnostics.iter().filter(|d| d.is_error()).count();
    let warnings = diagnostics.len() - errors;
    eprintln!(
        "{}, {}; {} checked",
        plural(errors, "error"),
        plural(warnings, "warning"),
        plural(report.config.len(), "resource")
    );
    if errors > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}
