//! The `confnode` command: run the node, check a configuration file, or hash a password.

use confnode::config::Config;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const USAGE: &str = "usage:
  confnode [--config PATH]       run the node (default: ./config.toml if it exists,
                                 else built-in loopback defaults)
  confnode check-config PATH     check a configuration file; exit 0 if it is valid
  confnode hash-password         read a password on stdin, print its argon2id hash
  confnode --version | --help";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        [] => run(None),
        ["--config", path] => run(Some(PathBuf::from(path))),
        ["check-config", path] => check_config(Path::new(path)),
        ["hash-password"] => hash_password(),
        ["--version" | "-V"] => {
            println!("confnode {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        ["--help" | "-h"] => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn run(path: Option<PathBuf>) -> ExitCode {
    let path = path.or_else(|| {
        let default = PathBuf::from("config.toml");
        default.exists().then_some(default)
    });
    let config = match &path {
        Some(p) => match Config::from_file(p) {
            Ok(c) => c,
            Err(errors) => {
                for e in &errors.0 {
                    eprintln!("{}: {e}", p.display());
                }
                return ExitCode::FAILURE;
            }
        },
        None => Config::default(),
    };
    let logs = tracing_subscriber::fmt()
        .with_max_level(config.log.level.as_tracing())
        .with_target(false);
    let dir = &config.log.dir;
    match (!dir.as_os_str().is_empty()).then_some(dir) {
        Some(dir) => match confnode::logfiles::DailyFiles::open(dir, config.log.retention_days) {
            Ok(files) => logs.with_ansi(false).with_writer(files).init(),
            Err(e) => {
                eprintln!("log.dir: cannot write logs in {}: {e}", dir.display());
                return ExitCode::FAILURE;
            }
        },
        // Colours only on a terminal: journald and files get plain lines.
        None => {
            use std::io::IsTerminal;
            logs.with_ansi(std::io::stderr().is_terminal()).init()
        }
    }
    match &path {
        Some(p) => tracing::info!("configuration from {}", p.display()),
        None => tracing::info!("no configuration file: built-in loopback defaults"),
    }
    match confnode::node::run_from(config, path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(path: &Path) -> ExitCode {
    match Config::from_file(path) {
        Ok(config) => {
            // The node reads the TLS files at start and refuses to start without them:
            // the check says so now rather than at the next restart.
            let t = &config.turn;
            if !t.tls_listen.is_empty()
                && let Err(e) = confnode::net::tls::TlsCerts::load(&t.tls_cert, &t.tls_key)
            {
                println!("{}: {e}", path.display());
                return ExitCode::FAILURE;
            }
            println!("{}: OK", path.display());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors.0 {
                println!("{}: {e}", path.display());
            }
            ExitCode::FAILURE
        }
    }
}

fn hash_password() -> ExitCode {
    use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("cannot read the password from stdin: {e}");
        return ExitCode::FAILURE;
    }
    // One trailing newline belongs to the terminal or `echo`, not to the password.
    let password = input
        .strip_suffix('\n')
        .map(|p| p.strip_suffix('\r').unwrap_or(p))
        .unwrap_or(&input);
    if password.is_empty() {
        eprintln!(
            "empty password: type one on stdin, e.g. `echo -n secret | confnode hash-password`"
        );
        return ExitCode::FAILURE;
    }
    let salt = SaltString::generate(&mut OsRng);
    match argon2::Argon2::default().hash_password(password.as_bytes(), &salt) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot hash the password: {e}");
            ExitCode::FAILURE
        }
    }
}
