use anyhow::Result;

pub fn features() -> Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(&runr::features::features())?
    );
    Ok(())
}
