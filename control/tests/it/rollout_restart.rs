//! A rollout survives its server: `outpost serve` is SIGKILLed while a wave soaks and started
//! again on the same database; the rollout continues from the stored state to completion, each
//! wave is admitted once, and no device receives two plans (or two admissions) for it. With two
//! instances on PostgreSQL, one drives a rollout at a time and a dead driver's lease is taken
//! over.

use std::collections::BTreeMap;

use crate::rollout::{Lab, TIMEOUT, Traffic, canary_half_all, placed};

#[test]
fn a_server_killed_mid_wave_resumes_and_no_device_gets_two_plans() {
    let mut lab = Lab::new();
    lab.start_agents(12);
    let _traffic = Traffic::start(&lab.agent_ports(), false);
    let id = lab.create(
        "restart",
        "fraud@2.0.0",
        &canary_half_all("4", &["--holdout", "10", "--gate", "max_p95_latency_ratio=4"]),
    );
    lab.approve(&id, &["alice", "bob"]);
    lab.cli_ok(&["rollout", "start", &id]);
    let before = lab.wait_rollout(&id, "wave 1 admitted and soaking", |v| {
        v["wave"] == 1 && v["wave_phase"] == "soaking" && v["devices_admitted"] == 6
    });
    let waves_before: Vec<Option<u64>> = placed(&before).iter().map(|d| d.2).collect();
    assert_eq!(
        waves_before.iter().filter(|w| **w == Some(2)).count(),
        0,
        "mid-rollout: {before:#}"
    );
    assert_eq!(before["state"], "running", "{before:#}");
    lab.kill_server();
    lab.start_server();
    let done = lab.wait_rollout(&id, "the rollout completes after the restart", |v| {
        v["state"] == "completed" && v["holdout"]["released"] == 1
    });
    let devices = placed(&done);
    let mut per_wave: BTreeMap<Option<u64>, usize> = BTreeMap::new();
    for device in &devices {
        *per_wave.entry(device.2).or_default() += 1;
    }
    assert_eq!(
        per_wave,
        BTreeMap::from([(Some(0), 2), (Some(1), 4), (Some(2), 5), (Some(3), 1)]),
        "{done:#}"
    );
    let admits = done["transitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .filter(|t| t["action"] == "rollout.wave.admit")
        .count();
    assert_eq!(admits, 3, "each wave admitted once: {done:#}");
    outpost_tests::wait::until(TIMEOUT, "every device on 2.0.0", || {
        lab.versions().values().filter(|v| *v == "2.0.0").count() == 12
    });
    for (device, plans) in lab.assigns().plans_of(&id) {
        assert_eq!(plans.len(), 1, "{device} received {} different plans", plans.len());
    }
    let audit = lab
        .api(&lab.admin_token)
        .get_json("/v1/audit/events", &[("action", "rollout.device.admit".into())])
        .expect("audit");
    assert_eq!(audit["events"].as_array().map(Vec::len), Some(12), "one admission per device");
}

/// Two `outpost serve` instances on one PostgreSQL database: one holds the rollout's lease and
/// drives it; SIGKILLed mid-rollout, its lease expires and the other instance takes it over and
/// completes the rollout (the killed one, restarted, does not take it back), each device
/// admitted once.
#[test]
fn with_two_instances_on_postgres_one_drives_and_a_dead_driver_is_replaced() {
    let postgres = outpost_tests::postgres::Postgres::start().expect("start PostgreSQL");
    let mut lab = Lab::with_database(Some(postgres.url()));
    let second = lab.add_instance();
    lab.start_agents(6);
    let _traffic = Traffic::start(&lab.agent_ports(), false);
    let id = lab.create(
        "takeover",
        "fraud@2.0.0",
        &canary_half_all("4", &["--gate", "max_p95_latency_ratio=4"]),
    );
    lab.approve(&id, &["alice", "carol"]);
    lab.cli_ok(&["rollout", "start", &id]);
    let instances = [lab.instance_id(0), lab.instance_id(second)];
    let running = lab.wait_rollout(&id, "a driver holds the lease and admits the canary", |v| {
        v["lease"]["owner"].is_string() && v["devices_admitted"].as_u64() >= Some(2)
    });
    let owner = running["lease"]["owner"].as_str().expect("owner").to_string();
    let driver = instances.iter().position(|i| *i == owner).expect("the owner is an instance");
    let survivor = 1 - driver;
    // The other instance sees the same rollout and does not take the live lease.
    let seen = lab.api_of(survivor).get_json(&format!("/v1/rollouts/{id}"), &[]).expect("show");
    assert_eq!(seen["lease"]["owner"], owner.as_str(), "{seen:#}");
    lab.kill_instance(driver);
    lab.wait_rollout_on(survivor, &id, "the survivor takes the expired lease", |v| {
        v["lease"]["owner"] == instances[survivor].as_str()
    });
    // Mosquitto keeps the dead instance's share of the device messages in its session until
    // it is back (see `server::mqtt`): a supervisor restarts it, and it finds the lease taken.
    lab.start_instance(driver);
    let done = lab.wait_rollout_on(survivor, &id, "the survivor completes the rollout", |v| {
        v["state"] == "completed" && v["lease"]["owner"] == instances[survivor].as_str()
    });
    assert_eq!(done["devices_admitted"], 6, "{done:#}");
    let admits = done["transitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .filter(|t| t["action"] == "rollout.wave.admit")
        .count();
    assert_eq!(admits, 3, "each wave admitted once: {done:#}");
    for (device, plans) in lab.assigns().plans_of(&id) {
        assert_eq!(plans.len(), 1, "{device} received {} different plans", plans.len());
    }
    let audit = lab
        .api_of(survivor)
        .get_json("/v1/audit/events", &[("action", "rollout.device.admit".into())])
        .expect("audit");
    assert_eq!(audit["events"].as_array().map(Vec::len), Some(6), "one admission per device");
    outpost_tests::wait::until(TIMEOUT, "every device on 2.0.0", || {
        let answer = lab.api_of(survivor).get_json("/v1/devices", &[]).expect("devices");
        answer["devices"].as_array().is_some_and(|devices| {
            devices.iter().filter(|d| d["active_model"]["version"] == "2.0.0").count() == 6
        })
    });
}
