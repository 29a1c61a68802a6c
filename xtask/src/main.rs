//! Developer commands for Outpost (`cargo xtask test | demo | models | cross | bench`).
//! Work in progress: the real commands are being written.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("xtask: not yet available")
}
