//! The `sluice` binary: everything is in the library's [`sluice::cli`].

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sluice::cli::main().await
}
