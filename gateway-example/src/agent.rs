//! The agent the gateway talks to. No model is reachable here, so the built-in [`EchoAgent`] answers
//! deterministically; a real agent implements [`Agent`] and is handed to `serve` instead.

use std::future::Future;

use hooks_core::event::{SessionId, SessionKey};

/// What the agent knows about the turn it answers.
#[derive(Debug, Clone)]
pub struct Turn<'a> {
    /// The session the message was routed to.
    pub session_id: SessionId,
    /// The conversation.
    pub key: &'a SessionKey,
    /// The user's text (after any command rewrite).
    pub text: &'a str,
    /// Whether the message was a `/new` or `/reset` that started a fresh session.
    pub reset: bool,
}

/// An agent: answers one user message of a session. Plug a model client in here.
pub trait Agent: Send + Sync + 'static {
    /// The reply to `turn`, or an error message (the user sees a short apology, hooks see the error).
    fn reply(&self, turn: Turn<'_>) -> impl Future<Output = Result<String, String>> + Send;
}

/// A stand-in agent: `/help` lists the commands, `/new` and `/reset` confirm the new session, other
/// commands are unknown, and any other text is echoed back.
#[derive(Debug, Default, Clone, Copy)]
pub struct EchoAgent;

/// What `/help` answers.
pub const HELP: &str = "Commands: /new or /reset starts a new session; /help shows this. Anything else is echoed back.";

impl Agent for EchoAgent {
    async fn reply(&self, turn: Turn<'_>) -> Result<String, String> {
        let text = turn.text.trim();
        if turn.reset {
            return Ok(format!("New session {} started.", turn.session_id));
        }
        if let Some(command) = text.strip_prefix('/') {
            let name = command.split(|c: char| c.is_whitespace() || c == '@').next().unwrap_or("");
            return Ok(match name {
                "help" | "start" => HELP.to_owned(),
                _ => format!("Unknown command /{name}. {HELP}"),
            });
        }
        if text.is_empty() { Ok("(no text)".to_owned()) } else { Ok(format!("echo: {text}")) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn reply(text: &str, reset: bool) -> String {
        let key = SessionKey::chat("web", "c");
        EchoAgent.reply(Turn { session_id: SessionId::from_u128(7), key: &key, text, reset }).await.unwrap()
    }

    #[tokio::test]
    async fn echo_agent_answers_deterministically() {
        assert_eq!(reply("hello", false).await, "echo: hello");
        assert_eq!(reply("/help", false).await, HELP);
        assert!(reply("/frobnicate x", false).await.starts_with("Unknown command /frobnicate."));
        assert_eq!(reply("/new", true).await, "New session 00000000-0000-0000-0000-000000000007 started.");
    }
}
