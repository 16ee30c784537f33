//! Writes every fuzz target's seed corpus under the folder given (default `fuzz/seeds`), for
//! `cargo fuzz run <target> <corpus> <seeds>/<target>`.

fn main() -> std::io::Result<()> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "seeds".into());
    psp_fuzz::seeds::write_all(std::path::Path::new(&dir))?;
    println!("seeds written under {dir}");
    Ok(())
}
