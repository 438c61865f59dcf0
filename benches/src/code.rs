//! Part of the sandbox suite (issue #13's warm runtimes): `python_ds_create_to_code_result_ms`,
//! `POST /sandboxes` of the python-ds template (Debian bookworm + python3 + numpy + pandas from
//! the images fixture, pushed to a local registry) sent → the result of a small pandas
//! computation through `POST /sandboxes/{id}/code` received, `--runs` times; each sandbox is
//! deleted before the next. The template is the Linux lane's (tests/tests/images.rs): the same
//! spec, so its ready snapshot comes from the template cache when that test ran before.
//! Reported with its median and p99.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use crate::sandbox::call;
use serde_json::{json, Value};
use tartarus_tests::platform::{base_images, template_cache, Daemon};
use tartarus_tests::registry::{fixtures, Registry};
use tartarus_tests::repo_root;

use crate::{ms, percentile, round3, summary, Options};

fn init_bin() -> Result<PathBuf, String> {
    let out = Command::new(repo_root().join("scripts/build-init.sh"))
        .output()
        .map_err(|e| format!("build-init.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!("build-init.sh: {}", out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .lines()
        .last()
        .map(PathBuf::from)
        .ok_or_else(|| "build-init.sh printed nothing".into())
}

/// The report and metrics of `python_ds_create_to_code_result_ms`.
pub fn run(opts: &Options) -> Result<(Value, Vec<Value>), String> {
    let reg = Registry::start(None);
    reg.push_oci(&fixtures().python_ds, "python-ds:latest");
    let cache = template_cache().with_file_name("images-lane");
    let init = init_bin()?;
    let (kernel, _) = base_images();
    let d = Daemon::start(
        "bench-code",
        &[
            "--init",
            init.to_str().unwrap_or_default(),
            "--kernel",
            kernel.to_str().unwrap_or_default(),
            "--image-cache",
            cache.to_str().unwrap_or_default(),
        ],
    );
    let r = reg.image_ref("python-ds:latest");
    // The Linux lane's spec: the same template cache entry.
    let spec = tartarus_tests::platform::python_ds_template(&r);
    let t = Instant::now();
    let built = Command::new("curl")
        .args(["-sS", "--max-time", "3600", "--unix-socket"])
        .arg(&d.socket)
        .args(["-H", "Content-Type: application/json", "--data-binary"])
        .arg(spec.to_string())
        .arg("http://localhost/templates")
        .output()
        .map_err(|e| format!("curl: {e}"))?;
    let text = String::from_utf8_lossy(&built.stdout);
    let last: Value = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);
    if last["type"] != "done" {
        return Err(format!("python-ds template: {last}"));
    }
    let build_s = t.elapsed().as_secs_f64();
    let body = json!({"code": "import pandas as pd\nint(pd.DataFrame({'a': [1, 2, 3]}).a.sum())"});
    let (mut samples, mut creates, mut codes) = (Vec::new(), Vec::new(), Vec::new());
    // One untimed round first: the page cache and the code paths.
    for i in 0..=opts.runs {
        let t = Instant::now();
        let (st, v) = call(
            &d,
            "POST",
            "/sandboxes",
            Some(&json!({"template": "python-ds"})),
        )?;
        let id = v["id"].as_str().map(str::to_string);
        let Some(id) = id.filter(|_| st == 201) else {
            return Err(format!("create: {st} {v}"));
        };
        let created = t.elapsed();
        let (st, v) = call(&d, "POST", &format!("/sandboxes/{id}/code"), Some(&body))?;
        if st != 200 || v["result"] != "6" {
            return Err(format!("code: {st} {v}"));
        }
        if i > 0 {
            samples.push(ms(t.elapsed()));
            creates.push(ms(created));
            codes.push(ms(t.elapsed() - created));
        }
        let (st, v) = call(&d, "DELETE", &format!("/sandboxes/{id}"), None)?;
        if st != 204 {
            return Err(format!("delete {id}: {st} {v}"));
        }
    }
    let mut sorted = samples.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let mut m = summary("python_ds_create_to_code_result_ms", "ms", &samples);
    m["p99"] = json!(round3(percentile(&sorted, 99.0)));
    let create = summary("python_ds_create_ms", "ms", &creates);
    let code = summary("python_ds_code_call_ms", "ms", &codes);
    let report = json!({
        "template_build_s": round3(build_s),
        "create_to_code_result_ms": {"median": m["median"], "p99": m["p99"]},
        "of_which_create_ms": create["median"],
        "of_which_code_call_ms": code["median"],
    });
    Ok((report, vec![m, create, code]))
}
