"""The one HTTP client batcher uses to talk to the API, its request bodies and its error tree."""
