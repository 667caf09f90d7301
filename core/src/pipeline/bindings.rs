//! The one `bindgen!` of sluice, over `wit/filter.wit`. Generated types stay
//! inside `pipeline/`: the rest of the server speaks the host-side types of
//! `pipeline::verdict` and `pipeline::session`.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "filter",
    imports: { default: async | trappable },
    exports: { default: async },
    with: {
        "sluice:filter/mail.message": crate::pipeline::message::MessageResource,
    },
});

pub use sluice::filter::types as wit_types;
