//! gateway-example: a chat gateway built on hooks-core.

fn main() {
    println!("gateway-example: not yet");
}
