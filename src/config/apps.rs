//! Several apps from one repository: `[apps.NAME]` tables, each a whole config of its own
//! (`[apps.backend.deploy]`, `[[apps.backend.step]]` …), or `NAME = "file.toml"` naming one.
//! A push deploys them in the order the file lists them.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::Config;

/// What a config file holds: one app, or several by name.
#[derive(Debug)]
pub struct Apps {
    /// The file read.
    pub path: PathBuf,
    /// Each app in the file's order; one, unnamed, for a file of one app.
    pub list: Vec<App>,
}

#[derive(Debug)]
pub struct App {
    /// None for the one app of a file without `[apps]`.
    pub name: Option<String>,
    pub config: Config,
}

impl Apps {
    pub fn load(path: &Path) -> Result<Apps> {
        let text = super::read(path)?;
        Apps::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Apps> {
        let invalid = || format!("invalid config `{}`", path.display());
        let table: toml::Table = text
            .parse()
            .map_err(|err: toml::de::Error| anyhow::anyhow!("{}", err.to_string().trim_end()))
            .with_context(invalid)?;
        if !table.contains_key("apps") {
            let config = Config::parse(text, path)?;
            return Ok(Apps {
                path: path.to_path_buf(),
                list: vec![App { name: None, config }],
            });
        }
        if let Some(other) = table.keys().find(|key| *key != "apps") {
            bail!(
                "{}: with `[apps]`, every section belongs to an app: move `[{other}]` into `[apps.NAME.{other}]` (or into the app's own file)",
                invalid()
            );
        }
        let file: File = toml::from_str(text)
            .map_err(|err| anyhow::anyhow!("{}", err.to_string().trim_end()))
            .with_context(invalid)?;
        if file.apps.0.is_empty() {
            bail!("{}: `[apps]` names no app", invalid());
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let mut list: Vec<App> = Vec::new();
        for (name, entry) in file.apps.0 {
            super::values::plain_name("app", &name).with_context(invalid)?;
            let inline = matches!(entry, Entry::Inline(_));
            let config = match entry {
                Entry::Inline(config) => config.finish(path),
                Entry::File(file) => {
                    let file = base.join(file);
                    Config::load(&file)
                }
            }
            .with_context(|| format!("app `{name}`"))?;
            let config = Config {
                app: Some(name.clone()),
                app_inline: inline,
                ..config
            };
            if let Some(other) = list
                .iter()
                .find(|app| overlap(&app.config.deploy.root, &config.deploy.root))
            {
                bail!(
                    "{}: apps `{}` and `{name}` share the deploy root `{}`: each app needs a folder of its own",
                    invalid(),
                    other.name.as_deref().unwrap_or_default(),
                    config.deploy.root.display()
                );
            }
            list.push(App {
                name: Some(name),
                config,
            });
        }
        Ok(Apps {
            path: path.to_path_buf(),
            list,
        })
    }

    pub fn several(&self) -> bool {
        self.list.iter().any(|app| app.name.is_some())
    }

    /// The names, for messages: `backend, frontend`.
    pub fn names(&self) -> String {
        self.list
            .iter()
            .filter_map(|app| app.name.as_deref())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The app a command works on: the one of a file of one app, or the one named.
    pub fn pick(self, name: Option<&str>) -> Result<Config> {
        let names = self.names();
        let path = self.path.display().to_string();
        if !self.several() {
            if let Some(name) = name {
                bail!("`{path}` holds one app, without `[apps]`: there is no app `{name}`");
            }
            return Ok(self.list.into_iter().next().expect("one app").config);
        }
        let Some(name) = name else {
            bail!("`{path}` holds several apps ({names}): name one with `--app NAME`");
        };
        self.list
            .into_iter()
            .find(|app| app.name.as_deref() == Some(name))
            .map(|app| app.config)
            .with_context(|| format!("`{path}` has no app `{name}` (it has: {names})"))
    }
}

/// Whether one folder is the other or inside it.
fn overlap(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    apps: Ordered,
}

/// The apps in the file's order.
struct Ordered(Vec<(String, Entry)>);

enum Entry {
    Inline(Box<Config>),
    File(PathBuf),
}

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Apps;
        impl<'de> Visitor<'de> for Apps {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a table of apps: `[apps.NAME]` sections, or `NAME = \"file.toml\"`")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered, A::Error> {
                let mut apps = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    apps.push((name, map.next_value::<Entry>()?));
                }
                Ok(Ordered(apps))
            }
        }
        deserializer.deserialize_map(Apps)
    }
}

impl<'de> Deserialize<'de> for Entry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct One;
        impl<'de> Visitor<'de> for One {
            type Value = Entry;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an app's sections, or the path of its config file")
            }
            fn visit_str<E: serde::de::Error>(self, path: &str) -> Result<Entry, E> {
                Ok(Entry::File(PathBuf::from(path)))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Entry, A::Error> {
                // Read by the same deserializer: a mistake keeps its line in the file.
                Config::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|config| Entry::Inline(Box::new(config)))
            }
        }
        deserializer.deserialize_any(One)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Apps> {
        Apps::parse(text, Path::new("/srv/app.git/ats-hook.toml"))
    }

    #[test]
    fn apps_keep_the_files_order_inline_or_from_their_own_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("web.toml"),
            "[deploy]\nroot = \"web\"\npath = \"frontend\"\n",
        )
        .unwrap();
        let text = "[apps.zeta.deploy]\nroot = \"/srv/zeta\"\npath = \"backend\"\n\
                    [[apps.zeta.step]]\nname = \"install\"\nrun = \"true\"\n\
                    [apps]\nweb = \"web.toml\"\n\
                    [apps.alpha.deploy]\nroot = \"/srv/alpha\"\n";
        let apps = Apps::parse(text, &dir.path().join("ats-hook.toml")).unwrap();
        let names: Vec<_> = apps.list.iter().map(|a| a.name.clone().unwrap()).collect();
        assert_eq!(names, ["zeta", "web", "alpha"]);
        assert_eq!(apps.list[0].config.steps.len(), 1);
        // A relative root is taken from the folder of the file that says it.
        assert_eq!(apps.list[1].config.deploy.root, dir.path().join("web"));
        assert_eq!(apps.names(), "zeta, web, alpha");
        assert!(apps.several());
        let err = Apps::parse(text, &dir.path().join("ats-hook.toml"))
            .unwrap()
            .pick(None)
            .unwrap_err();
        assert!(format!("{err:#}")
            .contains("holds several apps (zeta, web, alpha): name one with `--app NAME`"));
        let picked = Apps::parse(text, &dir.path().join("ats-hook.toml"))
            .unwrap()
            .pick(Some("alpha"))
            .unwrap();
        assert_eq!(picked.deploy.root, Path::new("/srv/alpha"));
    }

    #[test]
    fn a_file_of_one_app_is_one_unnamed_app() {
        let apps = parse("[deploy]\nroot = \"/srv/app\"\n").unwrap();
        assert!(!apps.several());
        let err = parse("[deploy]\nroot = \"/srv/app\"\n")
            .unwrap()
            .pick(Some("backend"))
            .unwrap_err();
        assert!(format!("{err:#}").contains("there is no app `backend`"));
    }

    #[test]
    fn malformed_apps_are_refused_with_the_line_or_the_fix() {
        for (text, error) in [
            (
                "[deploy]\nroot = \"/srv/a\"\n[apps.b.deploy]\nroot = \"/srv/b\"\n",
                "move `[deploy]` into `[apps.NAME.deploy]`",
            ),
            ("[apps]\n", "names no app"),
            (
                "[apps.Backend.deploy]\nroot = \"/srv/b\"\n",
                "invalid app name `Backend`",
            ),
            (
                "[apps.a.deploy]\nroot = \"/srv/x\"\n[apps.b.deploy]\nroot = \"/srv/x/b\"\n",
                "apps `a` and `b` share the deploy root",
            ),
            (
                "[apps.a.deploy]\nroot = \"/srv/a\"\nbranch = \"main\"\n",
                "line 3",
            ),
            (
                "[apps.a.deploy]\nroot = \"/srv/a\"\nkeep_releases = 1\n",
                "app `a`",
            ),
            (
                "[apps]\na = 3\n",
                "an app's sections, or the path of its config file",
            ),
            ("[apps]\na = \"missing.toml\"\n", "no config at"),
        ] {
            let err = format!("{:#}", parse(text).unwrap_err());
            assert!(err.contains(error), "{text}: {err}");
        }
    }
}
