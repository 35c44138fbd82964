//! Column type names as `system.columns` prints them: parsing arbitrary
//! text must never panic (nor recurse without bound), and a parsed type
//! must print to a name that parses to the same type.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::testing::ColumnType;

fuzz_target!(|text: &str| {
    if let Ok(ty) = ColumnType::parse(text) {
        let printed = ty.to_string();
        let again = ColumnType::parse(&printed)
            .unwrap_or_else(|e| panic!("{text:?} → {printed:?} does not parse: {e}"));
        assert_eq!(printed, again.to_string());
        let _ = sluice::testing::BlockEncoder::new(&[sluice::testing::ColumnSpec {
            name: "c".into(),
            type_name: printed,
            ty,
            default_kind: sluice::testing::DefaultKind::None,
        }]);
    }
});
