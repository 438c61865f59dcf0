//! A small model of an allow-list that can become both a seccompiler [`SeccompFilter`] and
//! seccompiler's JSON filter format, so the built-in lists can be printed for operators to edit.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use serde_json::{json, Value};

/// The action for a syscall outside the list: the kernel kills the whole process with SIGSYS.
pub const MISMATCH_ACTION: SeccompAction = SeccompAction::KillProcess;

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("Invalid seccomp rule for {0}")]
    Rule(&'static str, #[source] seccompiler::BackendError),
    #[error("Cannot compile the seccomp filter")]
    Compile(#[source] seccompiler::BackendError),
}

/// A syscall by name (as seccompiler's JSON and strace spell it) and number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Syscall {
    pub name: &'static str,
    pub nr: i64,
}

/// `sys!(SYS_read)`: the syscall `read` with its number from libc.
#[macro_export]
macro_rules! sys {
    ($nr:ident) => {
        $crate::rules::Syscall {
            name: stringify!($nr).split_at(4).1,
            nr: libc::$nr,
        }
    };
}

/// One comparison on one argument. Only what the built-in lists need: equality, and equality
/// under a mask.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cond {
    pub index: u8,
    /// Compare only the low 32 bits (the kernel's `unsigned int` arguments such as ioctl
    /// requests and signal numbers).
    pub dword: bool,
    pub mask: Option<u64>,
    pub value: u64,
    pub comment: Option<String>,
}

impl Cond {
    /// Argument `index` (32-bit) equals `value`.
    pub fn eq(index: u8, value: u64, comment: Option<&str>) -> Cond {
        Cond {
            index,
            dword: true,
            mask: None,
            value,
            comment: comment.map(str::to_string),
        }
    }

    /// `(argument & mask) == value` on the whole 64-bit argument.
    pub fn masked(index: u8, mask: u64, value: u64, comment: &str) -> Cond {
        Cond {
            index,
            dword: false,
            mask: Some(mask),
            value,
            comment: Some(comment.to_string()),
        }
    }

    fn to_seccomp(&self) -> Result<SeccompCondition, seccompiler::BackendError> {
        let len = if self.dword {
            SeccompCmpArgLen::Dword
        } else {
            SeccompCmpArgLen::Qword
        };
        let op = match self.mask {
            Some(m) => SeccompCmpOp::MaskedEq(m),
            None => SeccompCmpOp::Eq,
        };
        SeccompCondition::new(self.index, len, op, self.value)
    }

    /// The condition in seccompiler's JSON format.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "index": self.index,
            "type": if self.dword { "dword" } else { "qword" },
            "op": match self.mask {
                Some(m) => json!({ "masked_eq": m }),
                None => json!("eq"),
            },
            "val": self.value,
        });
        if let Some(c) = &self.comment {
            v["comment"] = json!(c);
        }
        v
    }
}

/// An allow-list: each syscall maps to the alternatives (OR) of its argument checks (AND); an
/// empty alternative allows the syscall with any arguments.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList {
    rules: BTreeMap<Syscall, Vec<Vec<Cond>>>,
}

impl AllowList {
    pub fn new() -> Self {
        Self::default()
    }

    /// Allows these syscalls with any arguments.
    pub fn any(&mut self, syscalls: &[Syscall]) -> &mut Self {
        for s in syscalls {
            self.rules.insert(*s, vec![Vec::new()]);
        }
        self
    }

    /// Allows `syscall` when every condition holds (in addition to its other alternatives).
    pub fn when(&mut self, syscall: Syscall, conds: Vec<Cond>) -> &mut Self {
        let alts = self.rules.entry(syscall).or_default();
        if !alts.iter().any(Vec::is_empty) && !alts.contains(&conds) {
            alts.push(conds);
        }
        self
    }

    /// Allows `syscall` when argument `index` is one of `values` (name, value).
    pub fn one_of(&mut self, syscall: Syscall, index: u8, values: &[(&str, u64)]) -> &mut Self {
        for (name, v) in values {
            self.when(syscall, vec![Cond::eq(index, *v, Some(name))]);
        }
        self
    }

    /// Adds everything `other` allows.
    pub fn merge(&mut self, other: &AllowList) -> &mut Self {
        for (s, alts) in &other.rules {
            if alts.iter().any(Vec::is_empty) {
                self.any(&[*s]);
            } else {
                for a in alts {
                    self.when(*s, a.clone());
                }
            }
        }
        self
    }

    /// Whether the list allows `nr` with at least some arguments.
    pub fn mentions(&self, nr: i64) -> bool {
        self.rules.keys().any(|s| s.nr == nr)
    }

    /// Whether the list allows `nr` with any arguments at all (no condition on it).
    pub fn allows_unconditionally(&self, nr: i64) -> bool {
        self.rules
            .iter()
            .any(|(s, alts)| s.nr == nr && alts.iter().any(Vec::is_empty))
    }

    /// Number of syscalls in the list.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Syscalls allowed with any arguments, and those with argument checks.
    pub fn names(&self) -> (Vec<&'static str>, Vec<&'static str>) {
        let (any, checked): (Vec<_>, Vec<_>) = self
            .rules
            .iter()
            .partition(|(_, alts)| alts.iter().any(Vec::is_empty));
        (
            any.into_iter().map(|(s, _)| s.name).collect(),
            checked.into_iter().map(|(s, _)| s.name).collect(),
        )
    }

    /// The seccompiler filter: allow what the list names, kill the process otherwise.
    pub fn to_filter(&self) -> Result<SeccompFilter, RulesError> {
        let mut map = BTreeMap::new();
        for (s, alts) in &self.rules {
            let rules = if alts.iter().any(Vec::is_empty) {
                Vec::new()
            } else {
                alts.iter()
                    .map(|conds| {
                        let conds = conds
                            .iter()
                            .map(Cond::to_seccomp)
                            .collect::<Result<Vec<_>, _>>()?;
                        SeccompRule::new(conds)
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| RulesError::Rule(s.name, e))?
            };
            map.insert(s.nr, rules);
        }
        SeccompFilter::new(
            map,
            MISMATCH_ACTION,
            SeccompAction::Allow,
            TargetArch::x86_64,
        )
        .map_err(RulesError::Compile)
    }

    /// The compiled BPF program.
    pub fn to_bpf(&self) -> Result<BpfProgram, RulesError> {
        self.to_filter()?.try_into().map_err(RulesError::Compile)
    }

    /// The list as one filter in seccompiler's JSON format.
    pub fn to_json(&self) -> Value {
        let mut filter = Vec::new();
        for (s, alts) in &self.rules {
            if alts.iter().any(Vec::is_empty) {
                filter.push(json!({ "syscall": s.name }));
                continue;
            }
            for conds in alts {
                let mut rule = json!({
                    "syscall": s.name,
                    "args": conds.iter().map(Cond::to_json).collect::<Vec<_>>(),
                });
                if let [c] = conds.as_slice() {
                    if let Some(comment) = &c.comment {
                        rule["comment"] = json!(comment);
                    }
                }
                filter.push(rule);
            }
        }
        json!({
            "mismatch_action": "kill_process",
            "match_action": "allow",
            "filter": filter,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_wins_over_conditions() {
        let mut l = AllowList::new();
        l.when(sys!(SYS_ioctl), vec![Cond::eq(1, 1, None)]);
        l.any(&[sys!(SYS_ioctl)]);
        l.when(sys!(SYS_ioctl), vec![Cond::eq(1, 2, None)]);
        assert_eq!(l.names(), (vec!["ioctl"], vec![]));
        assert_eq!(l.to_json()["filter"], json!([{"syscall": "ioctl"}]));
    }

    #[test]
    fn duplicate_conditions_are_kept_once() {
        let mut l = AllowList::new();
        l.one_of(sys!(SYS_ioctl), 1, &[("A", 1), ("B", 2), ("A", 1)]);
        assert_eq!(l.to_json()["filter"].as_array().unwrap().len(), 2);
        assert_eq!(l.names(), (vec![], vec!["ioctl"]));
    }

    #[test]
    fn json_form_compiles_to_the_same_program() {
        let mut l = AllowList::new();
        l.any(&[sys!(SYS_read), sys!(SYS_write)])
            .one_of(sys!(SYS_ioctl), 1, &[("KVM_RUN", 0xae80)])
            .when(
                sys!(SYS_mmap),
                vec![Cond::masked(2, libc::PROT_EXEC as u64, 0, "no PROT_EXEC")],
            );
        let text = json!({ "t": l.to_json() }).to_string();
        let map = seccompiler::compile_from_json(text.as_bytes(), TargetArch::x86_64).unwrap();
        assert_eq!(map["t"], l.to_bpf().unwrap());
    }
}
