//! `ats-hook install --repo PATH --handover`: the files a handover (`[serve]`) needs outside
//! the deploy root, made from the config for review: the nginx site and the upstream file it
//! includes, the systemd template unit of the slots, and the sudoers rule that lets the deploy
//! user start and stop exactly those instances and validate and reload nginx. Printed, never
//! written: they belong to root. Each begins with a `## PATH` line, and the admin puts them in place (or the Ansible role does).

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Result};

use crate::config::Config;

/// The contrib template the unit is made from.
const UNIT_TEMPLATE: &str = include_str!("../../../contrib/systemd/app@.service");

pub fn print(config: &Config, user: &str, exe: &Path, out: &mut dyn Write) -> Result<()> {
    let Some(serve) = &config.serve else {
        bail!(
            "`{}` has no `[serve]`: the handover needs two slots and a proxy (see contrib/examples/nginx-gunicorn-handover.toml)",
            config.path.display()
        );
    };
    let root = config.deploy.root.display().to_string();
    if let Some(file) = &serve.proxy.nginx {
        writeln!(
            out,
            "## {} — ats-hook writes a new one beside it at each handover: create it once, it and its folder owned by `{user}`:",
            file.display()
        )?;
        writeln!(out, "server {};\n", serve.slots[0])?;
        writeln!(
            out,
            "## the site (/etc/nginx/sites-available/app), which sends to the slot that file names:"
        )?;
        writeln!(
            out,
            "upstream app {{\n    include {};\n}}\nserver {{\n    listen 80;\n    location / {{\n        proxy_pass http://app;\n        proxy_set_header Host $host;\n        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n        proxy_set_header X-Forwarded-Proto $scheme;\n    }}\n}}\n",
            file.display()
        )?;
    }
    let mut allowed = Vec::new();
    if let Some(unit) = &serve.unit {
        let unit_text = UNIT_TEMPLATE
            .replace("/srv/app", &root)
            .replace("=deployer", &format!("={user}"))
            .replace("/usr/bin/ats-hook", &exe.display().to_string());
        writeln!(
            out,
            "## /etc/systemd/system/{unit} — its ExecStart runs gunicorn: put your server there, bound to $ATS_SLOT_ADDR; then `systemctl daemon-reload`:"
        )?;
        writeln!(out, "{unit_text}")?;
        if serve.sudo {
            let prefix = unit.trim_end_matches("@.service");
            for slot in crate::config::SLOT_NAMES {
                for verb in ["start", "stop"] {
                    allowed.push(format!("/usr/bin/systemctl {verb} {prefix}@{slot}.service"));
                }
            }
        }
    }
    if serve.sudo {
        for worker in &serve.workers {
            if let Some(unit) = &worker.unit {
                allowed.push(format!("/usr/bin/systemctl restart {unit}"));
            }
        }
    }
    let mut not_absolute = Vec::new();
    for command in [&serve.proxy.test, &serve.proxy.reload]
        .into_iter()
        .chain(&serve.proxy.command)
    {
        if let Some(rest) = command.trim().strip_prefix("sudo -n ") {
            if rest.starts_with('/') {
                allowed.push(rest.trim().to_string());
            } else {
                not_absolute.push(rest.trim().to_string());
            }
        }
    }
    if allowed.is_empty() {
        writeln!(
            out,
            "## no sudoers rule: nothing in `[serve]` runs through `sudo -n`"
        )?;
    } else {
        writeln!(
            out,
            "## /etc/sudoers.d/ats-hook-{user}-handover — mode 0440, check it with `visudo -cf`:"
        )?;
        let alias = format!(
            "ATS_HOOK_{}_HANDOVER",
            user.to_ascii_uppercase().replace('-', "_")
        );
        writeln!(out, "Cmnd_Alias {alias} = {}", allowed.join(", \\\n    "))?;
        writeln!(out, "{user} ALL=(root) NOPASSWD: {alias}")?;
    }
    for command in not_absolute {
        writeln!(
            out,
            "## `sudo -n {command}`: sudoers needs the program's full path (`/usr/sbin/nginx`); write it so in the config"
        )?;
    }
    Ok(())
}
