//! The command policy hook: denies the commands the operator disabled (`--deny-command reset`), so
//! the user is told and nothing is routed. A small real use of a decision hook.

use hooks_core::prelude::*;

/// The commands to deny, by name without the slash (`"reset"` denies `/reset` and `/reset@Bot`).
#[derive(Debug, Clone, Default)]
pub struct CommandPolicy {
    /// Denied command names.
    pub denied: Vec<String>,
}

/// Runs before the other command hooks, so a denied command is never rewritten or counted as run.
#[hook(command, priority = -100)]
fn command_policy(cmd: &Command, ctx: &HookContext) -> CommandDecision {
    match ctx.state::<CommandPolicy>() {
        Some(policy) if policy.denied.iter().any(|d| d == cmd.name()) => {
            CommandDecision::Deny { message: format!("The /{} command is disabled on this gateway.", cmd.name()) }
        }
        _ => CommandDecision::Allow,
    }
}
