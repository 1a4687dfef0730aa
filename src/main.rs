//! The `tributary` binary: parses the command line and hands over to [`tributary::cli`].

fn main() -> std::process::ExitCode {
    quiet_on_closed_stdout();
    tributary::cli::main()
}

/// `tributary … | head` must not panic when `head` closes the pipe. Rust ignores
/// SIGPIPE, so `println!` to a closed pipe panics with "failed printing to stdout:
/// Broken pipe"; restoring SIGPIPE would need `unsafe`, so this panic hook turns that
/// one panic, on any thread, into a quiet exit 0 (what the reader asked for: no more
/// output). Every other panic goes to the default hook unchanged.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}
