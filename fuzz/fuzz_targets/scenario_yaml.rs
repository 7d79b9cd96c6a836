//! Scenario files: `scenarios::parse::parse` never panics, and a scenario that parses
//! (and passes its reference checks) writes back as YAML that parses to the same
//! scenario.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let path = Path::new("fuzz.yaml");
    match scenarios::parse::parse(path, text) {
        Ok(scenario) => {
            #[allow(clippy::eq_op)] // floats: NaN never equals itself
            if scenario != scenario {
                return;
            }
            let yaml = serde_yaml::to_string(&scenario).expect("serializes");
            let again = scenarios::parse::parse(path, &yaml)
                .unwrap_or_else(|e| panic!("its own YAML does not parse: {e}\n{yaml}"));
            assert_eq!(again, scenario);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
