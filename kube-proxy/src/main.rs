fn main() {
    // The watcher and the OpenFlow writer are wired in here once they exist.
    eprintln!("switchyard-proxy: service model only; nothing to run yet");
}
