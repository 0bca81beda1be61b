"""Wire models: what clients send and receive (OpenAI names kept on OpenAI endpoints)."""
