//! `service-framework new plugin NAME [--dir DIR] [--path CHECKOUT]`: a bridge plugin in a
//! crate of its own, outside this workspace.
//!
//! The framework's crates are not published, so the new crate depends on them by path, in a
//! checkout of this repository: by default the one this binary was built from (its location is
//! recorded at build time), else `--path CHECKOUT`. It gets:
//!
//! - `Cargo.toml`: `sf-bridge` by path; the checkout's `[profile.*]` sections, plus overrides
//!   that give the checkout's own crates the settings they have as members of its workspace
//!   (there a `[profile.dev.package."*"]` reaches only the registry crates; here it would
//!   reach them too), so that with `CARGO_TARGET_DIR=<checkout>/target` the crates a
//!   `cargo build -p sf-bridge` built there are reused instead of rebuilt;
//! - `Cargo.lock`: the checkout's, so every dependency has the version the checkout built;
//! - `src/lib.rs`: one plugin written with the attribute macros (a GET route with a query
//!   default, a POST with a typed body, a function API, typed config);
//! - `src/main.rs`: a bridge binary, `NAME-bridge`, with the stock command line and the
//!   plugin linked in (run it directly or through `service-framework -s`);
//! - `config.toml` (the plugin's config, read by the bridge from the working directory),
//!   `README.md` and `.gitignore`.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use service_framework::cli::{self, ArgWalker};
use service_framework::Error;

/// The usage of `new`.
pub const USAGE: &str = "\
usage: service-framework new plugin NAME [--dir DIR] [--path CHECKOUT]

Creates a crate with one bridge plugin, NAME, and a bridge binary, NAME-bridge, that links it.

  NAME             the plugin's name: lower-case letters, digits, '-' and '_', starting with a
                   letter (also the crate's name and the first segment of its routes)
  --dir DIR        where to create it (./NAME); it must not exist or be empty
  --path CHECKOUT  the service-framework checkout to build against (its crates are not
                   published); by default the one this binary was built from
";

/// The crates of the checkout that a plugin crate links (sf-bridge and its path
/// dependencies): each gets the profile settings it has in the checkout's workspace.
/// The test `new_plugin` compares this list with what `cargo metadata` finds.
pub const LINKED_CRATES: [&str; 6] = [
    "sf-bridge",
    "sf-bridge-macros",
    "service-framework",
    "sf-connections",
    "sf-states",
    "sf-zmtp",
];

/// `<checkout>/service-framework` at build time.
const BUILT_FROM: &str = env!("CARGO_MANIFEST_DIR");

/// Runs `new ARGS...` (the words after `new`).
pub fn main(args: &[OsString]) -> ExitCode {
    let options = match parse(args) {
        Ok(Some(o)) => o,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprint!("error: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match create(&options) {
        Ok(dir) => {
            let name = &options.name;
            println!(
                "created plugin {name:?} in {}\n\n\
                 build it (reusing what the checkout built):\n  \
                 cd {} && CARGO_TARGET_DIR={} cargo build\n\
                 run it:\n  \
                 service-framework -s {}/debug/{name}-bridge --port 8080 --load-plugins {name}\n\
                 (see its README.md)",
                dir.display(),
                dir.display(),
                options.checkout.join("target").display(),
                options.checkout.join("target").display(),
            );
            ExitCode::SUCCESS
        }
        Err(e) => cli::fail(&e),
    }
}

/// What `new plugin` was asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// The plugin's (and the crate's) name.
    pub name: String,
    /// Where the crate goes.
    pub dir: PathBuf,
    /// The service-framework checkout (canonical).
    pub checkout: PathBuf,
}

/// `Ok(None)`: help was asked for.
fn parse(args: &[OsString]) -> Result<Option<Options>, String> {
    let words = ArgWalker::strings(args.iter().cloned())?;
    let mut walker = ArgWalker::new(words, 0);
    let mut positional = Vec::new();
    let mut dir = None;
    let mut path = None;
    while let Some((flag, raw)) = walker.next_word() {
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--dir" => dir = Some(PathBuf::from(walker.value(&flag)?)),
            "--path" => path = Some(PathBuf::from(walker.value(&flag)?)),
            _ if !raw.starts_with('-') => positional.push(raw),
            _ => return Err(format!("unknown option {raw:?}")),
        }
    }
    let name = match positional.as_slice() {
        [] => return Err("new needs what to create: `new plugin NAME`".into()),
        [kind, ..] if kind != "plugin" => {
            return Err(format!(
                "new can create a plugin (`new plugin NAME`), not {kind:?}"
            ))
        }
        [_] => return Err("new plugin needs a NAME".into()),
        [_, name] => name,
        [_, _, extra, ..] => return Err(format!("unexpected argument {extra:?}")),
    };
    check_name(name)?;
    let checkout = checkout(path)?;
    Ok(Some(Options {
        name: name.clone(),
        dir: dir.unwrap_or_else(|| PathBuf::from(name)),
        checkout,
    }))
}

fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    if !first_ok
        || !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        return Err(format!(
            "plugin name {name:?}: use lower-case letters, digits, '-' and '_', starting with a letter"
        ));
    }
    // Names cargo refuses for a package, or that its dependencies already take.
    const TAKEN: &str = "\
        test build deps examples self super crate core std alloc proc_macro as async await break \
        const continue dyn else enum extern false fn for if impl in let loop match mod move mut \
        pub ref return static struct trait true type unsafe use where while abstract become box \
        do final macro override priv typeof unsized virtual yield try gen serde schemars axum \
        tokio futures inventory";
    let lib = name.replace('-', "_");
    if TAKEN.split_whitespace().any(|t| t == lib)
        || LINKED_CRATES.iter().any(|c| c.replace('-', "_") == lib)
    {
        return Err(format!(
            "plugin name {name:?} is taken (a Rust keyword, a name cargo reserves, or a crate the plugin \
             links); choose another"
        ));
    }
    Ok(())
}

/// The checkout: `--path`, else the one this binary was built from.
fn checkout(given: Option<PathBuf>) -> Result<PathBuf, String> {
    let (dir, origin) = match given {
        Some(p) => (p, "--path"),
        None => (
            Path::new(BUILT_FROM).join(".."),
            "the checkout this binary was built from",
        ),
    };
    let dir = dir.canonicalize().map_err(|e| {
        format!(
            "{origin} {}: {e}; pass --path CHECKOUT (a clone of the service-framework repository)",
            dir.display()
        )
    })?;
    let bridge = dir.join("bridge").join("Cargo.toml");
    let is_bridge = std::fs::read_to_string(&bridge)
        .is_ok_and(|t| t.lines().any(|l| l.trim() == "name = \"sf-bridge\""));
    if !is_bridge || !dir.join("Cargo.toml").is_file() {
        return Err(format!(
            "{origin} {} is not a service-framework checkout (no workspace with bridge/Cargo.toml \
             of sf-bridge); pass --path CHECKOUT",
            dir.display()
        ));
    }
    dir.to_str().ok_or_else(|| {
        format!(
            "{origin} {}: the path is not UTF-8, which Cargo.toml cannot name",
            dir.display()
        )
    })?;
    Ok(dir)
}

/// Writes the crate; its directory on success.
pub fn create(o: &Options) -> Result<PathBuf, Error> {
    let io = |what: &Path, e: std::io::Error| Error::Other(format!("{}: {e}", what.display()));
    if o.dir.exists() {
        let empty = std::fs::read_dir(&o.dir)
            .map_err(|e| io(&o.dir, e))?
            .next()
            .is_none();
        if !empty {
            return Err(Error::Other(format!(
                "{} exists and is not empty; choose another --dir",
                o.dir.display()
            )));
        }
    }
    let workspace = std::fs::read_to_string(o.checkout.join("Cargo.toml"))
        .map_err(|e| io(&o.checkout.join("Cargo.toml"), e))?;
    let names = Names::new(&o.name);
    let files = [
        ("Cargo.toml", cargo_toml(&names, &o.checkout, &workspace)),
        ("src/lib.rs", lib_rs(&names)),
        ("src/main.rs", main_rs(&names)),
        ("config.toml", config_toml(&names)),
        ("README.md", readme(&names)),
        (".gitignore", "/target\n".to_owned()),
    ];
    std::fs::create_dir_all(o.dir.join("src")).map_err(|e| io(&o.dir, e))?;
    for (path, text) in files {
        let p = o.dir.join(path);
        std::fs::write(&p, text).map_err(|e| io(&p, e))?;
    }
    let lock = o.checkout.join("Cargo.lock");
    if lock.is_file() {
        std::fs::copy(&lock, o.dir.join("Cargo.lock")).map_err(|e| io(&lock, e))?;
    }
    Ok(o.dir.clone())
}

/// The names derived from the plugin's.
struct Names {
    /// The plugin, the package and the routes' first segment (`my-notes`).
    plugin: String,
    /// The library (`my_notes`).
    lib: String,
    /// The plugin's type (`MyNotes`).
    ty: String,
}

impl Names {
    fn new(name: &str) -> Names {
        let ty = name
            .split(['-', '_'])
            .filter(|w| !w.is_empty())
            .map(|w| {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            })
            .collect();
        Names {
            plugin: name.to_owned(),
            lib: name.replace('-', "_"),
            ty,
        }
    }
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One `[table]` of a TOML file read line by line: its header and its `key = value` lines.
#[derive(Debug, Default)]
struct Table {
    header: String,
    entries: Vec<(String, String)>,
}

/// The `[profile.*]` tables of the checkout's Cargo.toml, in order (comments dropped).
fn profile_tables(workspace: &str) -> Vec<Table> {
    let mut tables = Vec::new();
    let mut current: Option<Table> = None;
    for line in workspace.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            tables.extend(current.take());
            let header = line
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or_default()
                .trim();
            if header.starts_with("profile.") {
                current = Some(Table {
                    header: header.to_owned(),
                    entries: Vec::new(),
                });
            }
        } else if let Some(t) = current.as_mut() {
            if let Some((k, v)) = line.split_once('=').filter(|_| !line.starts_with('#')) {
                t.entries.push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
    }
    tables.extend(current);
    tables
}

/// Cargo's value of `key` in a built-in profile that does not set it.
fn profile_default(profile: &str, key: &str) -> Option<&'static str> {
    let dev = matches!(profile, "dev" | "test");
    let release = matches!(profile, "release" | "bench");
    match key {
        "debug" if dev => Some("true"),
        "debug" if release => Some("false"),
        "opt-level" if dev => Some("0"),
        "opt-level" if release => Some("3"),
        "debug-assertions" | "overflow-checks" if dev => Some("true"),
        "debug-assertions" | "overflow-checks" if release => Some("false"),
        "strip" if dev || release => Some("\"none\""),
        _ => None,
    }
}

/// The checkout's profiles, then `[profile.P.package.<crate>]` for each of its linked crates
/// with the values `[profile.P]` gives the members of its workspace, for every key that a
/// `[profile.P.package."*"]` sets for the others.
fn profiles(workspace: &str) -> String {
    let tables = profile_tables(workspace);
    let mut out = String::new();
    for t in &tables {
        let _ = writeln!(out, "\n[{}]", t.header);
        for (k, v) in &t.entries {
            let _ = writeln!(out, "{k} = {v}");
        }
    }
    for t in &tables {
        let Some(profile) = t
            .header
            .strip_prefix("profile.")
            .and_then(|h| {
                h.strip_suffix(".package.\"*\"")
                    .or_else(|| h.strip_suffix(".package.'*'"))
            })
            .filter(|p| !p.contains('.'))
        else {
            continue;
        };
        let own = tables
            .iter()
            .find(|o| o.header == format!("profile.{profile}"));
        let mut entries = Vec::new();
        for (key, _) in &t.entries {
            let value = own
                .and_then(|o| o.entries.iter().find(|(k, _)| k == key))
                .map(|(_, v)| v.as_str())
                .or_else(|| profile_default(profile, key));
            match value {
                Some(v) => entries.push(format!("{key} = {v}")),
                None => {
                    let _ = writeln!(
                        out,
                        "# [profile.{profile}.package.\"*\"] sets {key}, whose value for the \
                         checkout's own crates is not known here: they may be rebuilt."
                    );
                }
            }
        }
        if entries.is_empty() {
            continue;
        }
        for c in LINKED_CRATES {
            let _ = writeln!(out, "\n[profile.{profile}.package.{c}]");
            for e in &entries {
                let _ = writeln!(out, "{e}");
            }
        }
    }
    out
}

fn cargo_toml(n: &Names, checkout: &Path, workspace: &str) -> String {
    let bridge = toml_string(&checkout.join("bridge").to_string_lossy());
    format!(
        r#"[package]
name = "{plugin}"
version = "0.1.0"
edition = "2021"
publish = false

# A bridge with this crate's plugin linked in: the stock command line
# (`{plugin}-bridge --port 8080 --load-plugins {plugin}`).
[[bin]]
name = "{plugin}-bridge"
path = "src/main.rs"

[dependencies]
# The framework's crates are not published: they come from a checkout of its repository.
# sf-bridge re-exports what a plugin needs (serde, schemars, serde_json, axum) and #[model]
# derives serde's and schemars' traits through it, so they are not dependencies here.
sf-bridge = {{ path = {bridge} }}

# Its own workspace, even when created inside another one.
[workspace]

# The checkout's profiles, and its own crates given the settings they have as members of its
# workspace: with CARGO_TARGET_DIR set to the checkout's target directory, what
# `cargo build -p sf-bridge` built there is reused (with Cargo.lock, a copy of the checkout's).
{profiles}"#,
        plugin = n.plugin,
        profiles = profiles(workspace),
    )
}

fn lib_rs(n: &Names) -> String {
    format!(
        r#"//! The `{plugin}` plugin: notes kept in memory. A GET route with query parameters (one
//! with a default), a POST with a typed JSON body, a function API for other plugins, and a
//! typed config. Linking this crate registers it; `--load-plugins {plugin}` loads it.

use std::sync::Mutex;

use sf_bridge::{{model, plugin, ApiError}};

/// `[plugins.{plugin}]` in the bridge's config.toml; every key may be left out.
#[model]
#[serde(default)]
pub struct Config {{
    /// What `greet` says before the name.
    pub greeting: String,
    /// The most notes kept; adding one more is refused.
    pub max_notes: usize,
}}

impl Default for Config {{
    fn default() -> Self {{
        Config {{
            greeting: "Hello".to_owned(),
            max_notes: 1000,
        }}
    }}
}}

/// A greeting.
#[model]
pub struct Greeting {{
    pub message: String,
}}

/// A note to keep (the body of `POST /api/v1/{plugin}/notes`).
#[model]
#[derive(Clone)]
pub struct Note {{
    pub text: String,
    #[serde(default)]
    pub tags: Vec<String>,
}}

/// A kept note and its number.
#[model]
#[derive(Clone)]
pub struct Saved {{
    pub id: usize,
    pub note: Note,
}}

/// The plugin's state: made once when the bridge starts, shared by every request.
#[derive(Debug)]
pub struct {ty} {{
    config: Config,
    notes: Mutex<Vec<Saved>>,
}}

#[plugin(name = "{plugin}", version = "0.1.0", description = "Notes kept in memory",
         author = "my-team", config = Config)]
impl {ty} {{
    fn new(config: Config) -> Self {{
        {ty} {{
            config,
            notes: Mutex::new(Vec::new()),
        }}
    }}

    /// Greets `name`, `times` times (1 unless given):
    /// `GET /api/v1/{plugin}/greet?name=Ada&times=2`.
    #[on_request("/{plugin}/greet", tags = ["{plugin}"])]
    async fn greet(&self, name: String, #[default(1)] times: u32) -> Result<Greeting, ApiError> {{
        if !(1..=10).contains(&times) {{
            return Err(ApiError::bad_request(format!(
                "times must be between 1 and 10, got {{times}}"
            )));
        }}
        let one = format!("{{}}, {{name}}!", self.config.greeting);
        Ok(Greeting {{
            message: vec![one; times as usize].join(" "),
        }})
    }}

    /// Keeps a note: `POST /api/v1/{plugin}/notes` with `{{"text": "..", "tags": [..]}}`.
    #[on_request("/{plugin}/notes", methods = ["POST"], tags = ["{plugin}"])]
    async fn add_note(&self, note: Note) -> Result<Saved, ApiError> {{
        if note.text.trim().is_empty() {{
            return Err(ApiError::bad_request("a note needs some text"));
        }}
        let mut notes = self.notes.lock().unwrap_or_else(|p| p.into_inner());
        if notes.len() >= self.config.max_notes {{
            return Err(ApiError::bad_request(format!(
                "{{}} notes kept already (max_notes)",
                notes.len()
            )));
        }}
        let saved = Saved {{
            id: notes.len() + 1,
            note,
        }};
        notes.push(saved.clone());
        Ok(saved)
    }}

    /// The last `limit` notes (10 unless given), oldest first: `GET /api/v1/{plugin}/notes`.
    #[on_request("/{plugin}/notes", tags = ["{plugin}"])]
    async fn notes(&self, #[default(10)] limit: usize) -> Vec<Saved> {{
        let notes = self.notes.lock().unwrap_or_else(|p| p.into_inner());
        notes[notes.len().saturating_sub(limit)..].to_vec()
    }}

    /// How many notes carry `tag` (a function API for other plugins).
    ///
    /// Not an HTTP route: other plugins call `{plugin}.{ty}.count_tagged` with
    /// `ctx.call_plugin_api`, and the OpenAPI document lists it under `x-function-apis`.
    #[on_request(call_type = "func")]
    async fn count_tagged(&self, tag: String) -> usize {{
        let notes = self.notes.lock().unwrap_or_else(|p| p.into_inner());
        notes.iter().filter(|s| s.note.tags.contains(&tag)).count()
    }}
}}
"#,
        plugin = n.plugin,
        ty = n.ty,
    )
}

fn main_rs(n: &Names) -> String {
    format!(
        r#"//! `{plugin}-bridge`: the stock bridge's command line with the `{plugin}` plugin linked in.
//!
//! ```text
//! {plugin}-bridge --port 8080 --load-plugins {plugin}
//! service-framework -s target/debug/{plugin}-bridge --port 8080 --load-plugins {plugin}
//! ```

// Linking the library registers its plugins.
use {lib} as _;

fn main() -> std::process::ExitCode {{
    sf_bridge::cli::main(Vec::new())
}}
"#,
        plugin = n.plugin,
        lib = n.lib,
    )
}

fn config_toml(n: &Names) -> String {
    format!(
        "# Read by the bridge from its working directory (see the README).\n\
         [plugins.{plugin}]\n\
         greeting = \"Hello\"\n\
         max_notes = 1000\n",
        plugin = toml_key(&n.plugin),
    )
}

/// A TOML key: bare when it can be.
fn toml_key(k: &str) -> String {
    if k.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        k.to_owned()
    } else {
        toml_string(k)
    }
}

fn readme(n: &Names) -> String {
    format!(
        r#"# {plugin}

A plugin for the service-framework HTTP bridge, in a crate of its own, made by
`service-framework new plugin {plugin}`.

- `src/lib.rs`: the plugin, written with `#[plugin]` / `#[on_request]` / `#[model]`.
- `src/main.rs`: `{plugin}-bridge`, the stock bridge with this plugin linked in.
- `config.toml`: the plugin's config (`[plugins.{plugin}]`), read from the working directory.

## Build

The framework's crates are not published; `Cargo.toml` names `sf-bridge` by path in a
checkout of the repository. Building into that checkout's target directory reuses what it
built there (this crate has the checkout's profiles and a copy of its `Cargo.lock`):

```sh
CARGO_TARGET_DIR=<checkout>/target cargo build
```

(`cargo build -p sf-bridge` in the checkout first makes this build compile little more than
this crate; a plain `cargo build` works too, into `./target`, from scratch.)

## Run

```sh
service-framework -s <target>/debug/{plugin}-bridge --port 8080 --load-plugins {plugin}
# or, with the binary beside service-framework or on PATH:
service-framework -s {plugin}-bridge --port 8080 --load-plugins {plugin}
```

It takes every flag of `service-framework -s bridge` (`--help` lists them) and serves the docs
at `/docs`, the OpenAPI document at `/api/v1/openapi.json`, and:

```sh
curl 'http://127.0.0.1:8080/api/v1/{plugin}/greet?name=Ada'
curl -X POST http://127.0.0.1:8080/api/v1/{plugin}/notes \
     -H 'content-type: application/json' -d '{{"text": "buy milk", "tags": ["home"]}}'
curl 'http://127.0.0.1:8080/api/v1/{plugin}/notes?limit=5'
```

The function API `{plugin}.{ty}.count_tagged` is for other plugins
(`ctx.call_plugin_api`); the OpenAPI document lists it under `x-function-apis`.
"#,
        plugin = n.plugin,
        ty = n.ty,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let n = Names::new("my-notes_2");
        assert_eq!((n.lib.as_str(), n.ty.as_str()), ("my_notes_2", "MyNotes2"));
        assert!(check_name("notes").is_ok());
        let bad = [
            "",
            "Notes",
            "1x",
            "a b",
            "fn",
            "sf-bridge",
            "sf_zmtp",
            "test",
        ];
        for bad in bad {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn member_settings_for_the_linked_crates() {
        let ws = "[workspace]\nmembers = []\n\n[profile.release]\ndebug = 1\n\n# why\n\
                  [profile.dev]\ndebug = \"line-tables-only\"\n\n[profile.dev.package.\"*\"]\n\
                  debug = false\n\n[profile.release.package.\"*\"]\nopt-level = 2\n";
        let p = profiles(ws);
        assert!(p.contains("[profile.release]\ndebug = 1\n"), "{p}");
        assert!(
            p.contains("[profile.dev.package.\"*\"]\ndebug = false\n"),
            "{p}"
        );
        assert!(
            p.contains("[profile.dev.package.sf-zmtp]\ndebug = \"line-tables-only\"\n"),
            "{p}"
        );
        // Not set by [profile.release]: cargo's default for it.
        assert!(
            p.contains("[profile.release.package.sf-bridge]\nopt-level = 3\n"),
            "{p}"
        );
        assert!(!p.contains("workspace"), "{p}");
    }

    #[test]
    fn toml_strings() {
        assert_eq!(toml_string(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
