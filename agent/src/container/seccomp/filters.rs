//! A checked profile (default action, rules, flags) and its compilation into one BPF
//! program made of seccompiler filters, as the [module documentation](super) describes.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};

use super::{BpfInsn, SeccompError};

/// The longest filter the kernel accepts (`BPF_MAXINSNS`).
pub(super) const BPF_MAX_LEN: usize = 4096;
/// x32 syscalls: the x86_64 arch with this bit set in the syscall number.
pub(super) const X32_SYSCALL_BIT: u32 = 0x4000_0000;

// Classic BPF opcodes (linux/bpf_common.h).
const LD_W_ABS: u16 = 0x20;
const JMP_JA: u16 = 0x05;
const JMP_JEQ_K: u16 = 0x15;
const JMP_JGT_K: u16 = 0x25;
const JMP_JGE_K: u16 = 0x35;
const RET_K: u16 = 0x06;
/// `offsetof(struct seccomp_data, nr)`, `offsetof(struct seccomp_data, arch)`.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
/// `AUDIT_ARCH_X86_64`.
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;

/// What a filter returns for a syscall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Action {
    /// `SECCOMP_RET_KILL_PROCESS`.
    KillProcess,
    /// `SECCOMP_RET_KILL_THREAD`.
    KillThread,
    /// `SECCOMP_RET_TRAP`: SIGSYS.
    Trap,
    /// `SECCOMP_RET_ERRNO` with this errno.
    Errno(u16),
    /// `SECCOMP_RET_TRACE` with this data.
    Trace(u16),
    /// `SECCOMP_RET_LOG`.
    Log,
    /// `SECCOMP_RET_ALLOW`.
    Allow,
}

impl From<Action> for SeccompAction {
    fn from(action: Action) -> Self {
        match action {
            Action::KillProcess => SeccompAction::KillProcess,
            Action::KillThread => SeccompAction::KillThread,
            Action::Trap => SeccompAction::Trap,
            Action::Errno(errno) => SeccompAction::Errno(errno.into()),
            Action::Trace(data) => SeccompAction::Trace(data.into()),
            Action::Log => SeccompAction::Log,
            Action::Allow => SeccompAction::Allow,
        }
    }
}

/// One rule: syscall `nr` gets `action` when all `conds` hold (always when there are none).
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Rule {
    /// The syscall number (of the native architecture).
    pub nr: i64,
    /// What the syscall gets when the rule matches.
    pub action: Action,
    /// Argument conditions, all of which must hold.
    pub conds: Vec<SeccompCondition>,
}

/// A checked profile, ready to compile.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Profile {
    /// What a syscall no rule matches gets.
    pub default: Action,
    /// The rules, in profile order.
    pub rules: Vec<Rule>,
    /// `SECCOMP_FILTER_FLAG_*` bits.
    pub flags: u32,
    /// Syscalls numbered above this get ENOSYS (runc's stub), if set.
    pub enosys_above: Option<u32>,
}

impl Action {
    /// The kernel's precedence between filter results: higher wins.
    fn precedence(self) -> u8 {
        match self {
            Action::KillProcess => 7,
            Action::KillThread => 6,
            Action::Trap => 5,
            Action::Errno(_) => 4,
            Action::Trace(_) => 3,
            Action::Log => 2,
            Action::Allow => 1,
        }
    }
}

/// Compiles a profile into the filters to install, in order: none (nothing to install) or
/// one program made of sections (see the [module documentation](super)).
pub(super) fn build(profile: &Profile) -> Result<Vec<Vec<BpfInsn>>, SeccompError> {
    let active: Vec<&Rule> = profile
        .rules
        .iter()
        .filter(|r| r.action != profile.default)
        .collect();
    // (precedence, what, body without seccompiler's arch prologue)
    let mut sections: Vec<(u8, String, Vec<BpfInsn>)> = Vec::new();
    if profile.default != Action::Allow {
        let what = format!("base ({:?})", profile.default);
        let body = section(&what, &active, profile.default, Action::Allow)?;
        sections.push((profile.default.precedence(), what, body));
    }
    // One section per non-ALLOW rule action, in order of first appearance...
    let mut groups: Vec<(Action, Vec<&Rule>)> = Vec::new();
    for rule in active.iter().filter(|r| r.action != Action::Allow) {
        match groups.iter_mut().find(|(a, _)| *a == rule.action) {
            Some((_, rules)) => rules.push(rule),
            None => groups.push((rule.action, vec![rule])),
        }
    }
    for (action, rules) in &groups {
        let what = format!("{action:?} rules");
        let body = section(&what, rules, Action::Allow, *action)?;
        sections.push((action.precedence(), what, body));
    }
    if sections.is_empty() {
        return Ok(Vec::new());
    }
    // ...then by precedence, highest first (stable: equal actions keep profile order).
    sections.sort_by_key(|(precedence, _, _)| std::cmp::Reverse(*precedence));

    let mut prog = prologue().to_vec();
    prog.extend(guard(profile.enosys_above));
    let last = sections.len() - 1;
    for (i, (_, _, body)) in sections.into_iter().enumerate() {
        let len = body.len();
        for (pc, insn) in body.into_iter().enumerate() {
            // Not decided here: on to the next section (same length, so no jump moves).
            if i < last && insn == (RET_K, 0, 0, libc::SECCOMP_RET_ALLOW) {
                // pc < len <= u32::MAX: the section is shorter than the limit checked below.
                prog.push((JMP_JA, 0, 0, (len - pc - 1) as u32));
            } else {
                prog.push(insn);
            }
        }
    }
    if prog.len() > BPF_MAX_LEN {
        return Err(SeccompError::FilterTooLarge {
            filter: "program".to_string(),
            len: prog.len(),
        });
    }
    Ok(vec![prog])
}

/// What seccompiler puts first: load arch; if x86_64 skip 1; kill the process.
fn prologue() -> [BpfInsn; 3] {
    [
        (LD_W_ABS, 0, 0, DATA_ARCH),
        (JMP_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        (RET_K, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
    ]
}

/// One seccompiler filter over `rules`, less its arch prologue: a section that starts by
/// loading the syscall number and whose jumps all stay inside it.
fn section(
    what: &str,
    rules: &[&Rule],
    mismatch: Action,
    on_match: Action,
) -> Result<Vec<BpfInsn>, SeccompError> {
    let build_err = |source| SeccompError::Build {
        filter: what.to_string(),
        source,
    };
    // Per syscall: None = unconditional (absorbs conditional rules), else the rules (ORed).
    let mut map: BTreeMap<i64, Option<Vec<SeccompRule>>> = BTreeMap::new();
    for rule in rules {
        let entry = map.entry(rule.nr).or_insert_with(|| Some(Vec::new()));
        if rule.conds.is_empty() {
            *entry = None;
        } else if let Some(list) = entry {
            let compiled = SeccompRule::new(rule.conds.clone()).map_err(build_err)?;
            if !list.contains(&compiled) {
                list.push(compiled);
            }
        }
    }
    let map = map
        .into_iter()
        .map(|(nr, rules)| (nr, rules.unwrap_or_default()))
        .collect();
    let filter = SeccompFilter::new(map, mismatch.into(), on_match.into(), TargetArch::x86_64)
        .map_err(build_err)?;
    let prog: BpfProgram = filter.try_into().map_err(|source| match source {
        seccompiler::BackendError::FilterTooLarge(len) => SeccompError::FilterTooLarge {
            filter: what.to_string(),
            len,
        },
        source => build_err(source),
    })?;
    let insns: Vec<BpfInsn> = prog.iter().map(|i| (i.code, i.jt, i.jf, i.k)).collect();
    // Nothing jumps into the prologue from after it (BPF jumps forward only), so it can go.
    if insns.len() < 4 || insns[..3] != prologue() {
        return Err(SeccompError::UnexpectedBpf {
            filter: what.to_string(),
        });
    }
    Ok(insns[3..].to_vec())
}

/// Kills x32 syscalls (x86_64 arch, bit 30 set: not in the x86_64 table the rules use) and,
/// when asked, answers ENOSYS to syscalls numbered above `enosys_above`.
fn guard(enosys_above: Option<u32>) -> Vec<BpfInsn> {
    let mut insns = vec![
        (LD_W_ABS, 0, 0, DATA_NR),
        (JMP_JGE_K, 0, 1, X32_SYSCALL_BIT),
        (RET_K, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
    ];
    if let Some(largest) = enosys_above {
        insns.push((JMP_JGT_K, 0, 1, largest));
        insns.push((RET_K, 0, 0, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32));
    }
    insns
}

#[cfg(test)]
mod tests {
    use super::*;
    use seccompiler::{SeccompCmpArgLen, SeccompCmpOp};

    fn rule(nr: i64, action: Action, conds: Vec<SeccompCondition>) -> Rule {
        Rule { nr, action, conds }
    }

    fn eq(index: u8, value: u64) -> SeccompCondition {
        SeccompCondition::new(index, SeccompCmpArgLen::Qword, SeccompCmpOp::Eq, value).unwrap()
    }

    fn profile(default: Action, rules: Vec<Rule>) -> Profile {
        Profile {
            default,
            rules,
            flags: 0,
            enosys_above: None,
        }
    }

    /// The values the `ret` instructions of a program return, in program order, deduplicated
    /// where consecutive.
    fn returns(prog: &[BpfInsn]) -> Vec<u32> {
        let mut rets: Vec<u32> = prog.iter().filter(|i| i.0 == RET_K).map(|i| i.3).collect();
        rets.dedup();
        rets
    }

    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
    const KILL: u32 = libc::SECCOMP_RET_KILL_PROCESS;
    const fn errno(e: u32) -> u32 {
        libc::SECCOMP_RET_ERRNO | e
    }

    #[test]
    fn allow_default_with_only_allow_rules_is_empty() {
        let p = profile(Action::Allow, vec![rule(39, Action::Allow, vec![])]);
        assert!(build(&p).unwrap().is_empty());
    }

    #[test]
    fn base_section_only_when_default_is_not_allow() {
        let p = profile(Action::Errno(13), vec![rule(39, Action::Allow, vec![])]);
        let progs = build(&p).unwrap();
        assert_eq!(progs.len(), 1);
        let prog = &progs[0];
        assert_eq!(prog[..3], prologue());
        assert_eq!(prog[3], (LD_W_ABS, 0, 0, DATA_NR));
        assert_eq!(prog[4], (JMP_JGE_K, 0, 1, X32_SYSCALL_BIT));
        // Arch kill, x32 kill, then the only section: allow or the default.
        assert_eq!(returns(prog), vec![KILL, ALLOW, errno(13)]);
        assert!(!prog
            .iter()
            .any(|i| i.0 == JMP_JA && i.1 == 0 && i.2 == 0 && i.3 > 2));
    }

    #[test]
    fn sections_by_precedence_with_allow_chained() {
        let p = profile(
            Action::Allow,
            vec![
                rule(1, Action::Errno(1), vec![]),
                rule(2, Action::Errno(38), vec![]),
                rule(3, Action::Errno(1), vec![eq(0, 5)]),
                rule(4, Action::KillProcess, vec![]),
                rule(5, Action::Log, vec![]),
            ],
        );
        let progs = build(&p).unwrap();
        assert_eq!(progs.len(), 1);
        let prog = &progs[0];
        // KILL section first, then ERRNO(1) (listed first), ERRNO(38), LOG; only the last
        // section still returns ALLOW.
        let log = libc::SECCOMP_RET_LOG;
        assert_eq!(returns(prog), vec![KILL, errno(1), errno(38), log, ALLOW]);
        // Every jump lands inside the program and it ends with a return.
        for (pc, insn) in prog.iter().enumerate() {
            if insn.0 == JMP_JA {
                assert!(pc + 1 + (insn.3 as usize) < prog.len());
            }
        }
        assert_eq!(prog.last().unwrap().0, RET_K);
    }

    #[test]
    fn rules_with_the_default_action_are_dropped() {
        let p = profile(
            Action::Errno(1),
            vec![
                rule(1, Action::Errno(1), vec![]),
                rule(2, Action::Allow, vec![]),
            ],
        );
        let with = build(&p).unwrap();
        let without = build(&profile(
            Action::Errno(1),
            vec![rule(2, Action::Allow, vec![])],
        ));
        assert_eq!(with, without.unwrap());
    }

    #[test]
    fn unconditional_rule_absorbs_conditional_ones() {
        let both = profile(
            Action::Errno(1),
            vec![
                rule(7, Action::Allow, vec![eq(0, 1)]),
                rule(7, Action::Allow, vec![]),
            ],
        );
        let plain = profile(Action::Errno(1), vec![rule(7, Action::Allow, vec![])]);
        assert_eq!(build(&both).unwrap(), build(&plain).unwrap());
    }

    #[test]
    fn enosys_stub_after_the_x32_guard() {
        let mut p = profile(Action::Errno(1), vec![rule(39, Action::Allow, vec![])]);
        p.enosys_above = Some(231);
        let prog = &build(&p).unwrap()[0];
        assert_eq!(prog[6], (JMP_JGT_K, 0, 1, 231));
        assert_eq!(prog[7], (RET_K, 0, 0, errno(libc::ENOSYS as u32)));
    }

    #[test]
    fn too_many_rules_is_an_error() {
        // 600 conditional rules on one syscall: far over 4096 instructions.
        let rules = (0..600)
            .map(|v| rule(1, Action::Allow, vec![eq(0, v), eq(1, v)]))
            .collect();
        let err = build(&profile(Action::Errno(1), rules)).unwrap_err();
        assert!(matches!(err, SeccompError::FilterTooLarge { .. }), "{err}");
    }
}
