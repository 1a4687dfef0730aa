//! The `tributary` binary: parses the command line and hands over to [`tributary::cli`].

fn main() -> std::process::ExitCode {
    tributary::cli::main()
}
