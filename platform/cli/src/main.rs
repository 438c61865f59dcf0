fn main() {
    std::process::exit(tartarus_cli::main_entry());
}
