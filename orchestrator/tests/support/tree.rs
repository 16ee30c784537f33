//! A tree of real orchestrator processes over one fleet of Totebox processes: regional
//! orchestrators, each over its share of the Toteboxes, and one above them that has each region
//! as a fleet member; beside it, a flat orchestrator over every Totebox, for comparison.

use std::path::PathBuf;

use psp_core::{IdentityKey, Operation};

use super::processes::{Fleet, Operator, Orchestrator};

/// The fleet, its regions and the orchestrators over them.
pub struct Tree {
    /// The Toteboxes (archives `prop-*` and `sub-*`) and the files consoles need.
    pub fleet: Fleet,
    /// The regions' names (`region-0`, ...), in order.
    pub names: Vec<String>,
    /// Each region's archive ids.
    pub members: Vec<Vec<String>>,
    /// The regional orchestrators, in order (`None` once stopped).
    pub regions: Vec<Option<Orchestrator>>,
    /// The orchestrator above them.
    pub top: Orchestrator,
    /// One orchestrator over every Totebox.
    pub flat: Orchestrator,
    /// The operator of the `acme` tenant, at the top and on the flat orchestrator.
    pub acme: Operator,
    /// The top's key, the regions' operator.
    pub top_key: IdentityKey,
}

/// The top's keepalive pings its regions every 6 × `redial_ms`: kept out of the few seconds a
/// test counts round trips in (a region found down is dialed by the request that needs it).
const TOP_DEFAULTS: &str = "redial_ms = 600000";

/// A region's `[[fleet]]` address as the top dials it: the region itself, or a proxy before it.
pub type Address = Box<dyn Fn(usize, &str) -> String>;

impl Tree {
    /// `properties` + `subsidiaries` Toteboxes dealt round-robin to `regions` regional
    /// orchestrators. `region_defaults` are TOML lines for each region's `[defaults]`;
    /// `address(i, real)` is where the top dials region `i` (a proxy, or `real`).
    pub fn start(
        properties: usize,
        subsidiaries: usize,
        regions: usize,
        region_defaults: &str,
        address: Address,
    ) -> Tree {
        let keys: Vec<IdentityKey> = (0..regions)
            .map(|_| IdentityKey::generate().unwrap())
            .collect();
        let fleet = Fleet::start_paired(
            properties,
            subsidiaries,
            |_| String::new(),
            &keys.iter().map(IdentityKey::public).collect::<Vec<_>>(),
        );
        Tree::over(fleet, keys, region_defaults, address)
    }

    /// [`Tree::start`] over a fleet already started, paired with `keys` (one per region).
    pub fn over(
        fleet: Fleet,
        keys: Vec<IdentityKey>,
        region_defaults: &str,
        address: Address,
    ) -> Tree {
        let regions = keys.len();
        let top_key = IdentityKey::generate().unwrap();
        top_key.save(&fleet.path("top.pem")).unwrap();
        let ids: Vec<String> = fleet.toteboxes.iter().map(|t| t.id.clone()).collect();
        let acme = fleet.operator(
            "acme",
            &ids.iter().map(String::as_str).collect::<Vec<_>>(),
            vec![Operation::Query, Operation::command("snapshot")],
        );
        let names: Vec<String> = (0..regions).map(|i| format!("region-{i}")).collect();
        let mut members = vec![Vec::new(); regions];
        for (i, id) in ids.iter().enumerate() {
            members[i % regions].push(id.clone());
        }
        let mut started = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            key.save(&fleet.path(&format!("{}.pem", names[i]))).unwrap();
            let section: String = fleet
                .toteboxes
                .iter()
                .filter(|t| members[i].contains(&t.id))
                .map(|t| {
                    format!(
                        "[[fleet]]\nid = \"{}\"\naddress = \"{}\"\nkey = \"{}\"\nlabels = {{ {} }}\n",
                        t.id, t.address, t.key, t.labels
                    )
                })
                .collect();
            let path = fleet.path(&format!("{}.toml", names[i]));
            std::fs::write(
                &path,
                format!(
                    "identity = \"{}.pem\"\nlisten = \"127.0.0.1:0\"\n[defaults]\n{region_defaults}\n{section}[[tenants]]\nname = \"upper\"\noperators = [\"{}\"]\narchives = {:?}\n",
                    names[i],
                    top_key.public(),
                    members[i]
                ),
            )
            .unwrap();
            started.push(Some(fleet.serve(&path)));
        }
        let section: String = started
            .iter()
            .enumerate()
            .map(|(i, region)| {
                let region = region.as_ref().unwrap();
                format!(
                    "[[fleet]]\nid = \"{}\"\nkind = \"orchestrator\"\naddress = \"{}\"\nkey = \"{}\"\nlabels = {{ site = \"{}\" }}\n",
                    names[i],
                    address(i, &region.address),
                    region.key,
                    names[i]
                )
            })
            .collect();
        let top_config = fleet.path("top.toml");
        std::fs::write(
            &top_config,
            format!(
                "identity = \"top.pem\"\nlisten = \"127.0.0.1:0\"\n[defaults]\nsource_timeout_ms = 3000\ndeadline_ms = 6000\n{TOP_DEFAULTS}\n{section}[[tenants]]\nname = \"acme\"\noperators = [\"{}\"]\narchives = {:?}\n{}",
                acme.key,
                names,
                orchestrator::demo::VIEWPORTS
            ),
        )
        .unwrap();
        let top = fleet.serve(&top_config);
        let flat_config =
            fleet.orchestrator_config("flat.toml", &super::acme_tenant(acme.key, &ids));
        let flat = fleet.serve(&flat_config);
        let tree = Tree {
            fleet,
            names,
            members,
            regions: started,
            top,
            flat,
            acme,
            top_key,
        };
        tree.wait_for_directories();
        tree
    }

    /// Waits until the top lists every archive through its region (each region has answered
    /// its first `fleet()`), for at most 20 s.
    pub fn wait_for_directories(&self) {
        let expected: usize = self.members.iter().map(Vec::len).sum();
        self.top.wait_listed(&self.fleet, &self.acme, expected, 0);
    }

    /// The region archive `id` is reached through.
    pub fn region_of(&self, id: &str) -> &str {
        let i = self
            .members
            .iter()
            .position(|m| m.iter().any(|a| a == id))
            .unwrap();
        &self.names[i]
    }

    /// A config file path in the fleet's folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.fleet.path(name)
    }
}
