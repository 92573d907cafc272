fn main() -> std::process::ExitCode {
    dockhand::cli::main()
}
