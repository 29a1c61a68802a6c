//! Build script: Tauri's code generation (config, capabilities, ACL) for the console.
//!
//! The frontend is built by Vite into `dist/` (`npm ci && npm run build` in `ui/`; `cargo xtask
//! test` does it). A checkout where it has not been built yet still compiles: this script then
//! writes a one-page `dist/index.html` that says so, and warns.

use std::path::Path;

fn main() {
    let dist = Path::new("dist");
    let index = dist.join("index.html");
    println!("cargo:rerun-if-changed=dist");
    if !index.exists() {
        println!(
            "cargo:warning=ui/dist is missing: the console is built with a placeholder page; \
             run `npm ci && npm run build` in ui/ for the real frontend"
        );
        let page = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\" />\
                    <title>Outpost Console</title></head><body><h1>Outpost Console</h1>\
                    <p>This build has no frontend: run <code>npm ci &amp;&amp; npm run build</code> \
                    in <code>ui/</code>, then build the console again.</p></body></html>\n";
        if let Err(error) =
            std::fs::create_dir_all(dist).and_then(|()| std::fs::write(&index, page))
        {
            println!("cargo:warning=cannot write the placeholder {}: {error}", index.display());
        }
    }
    tauri_build::build();
}
