// A name for a new version of a model, ordered by the server's clock: versions of one model
// compare as strings in the order their ingests started (ties broken at random).
// No parameters. Returns version.
// Internal: a step splitcut runs itself; `splitcut query` does not offer it.
RETURN right('0000000000000000' + toString(timestamp()), 16) + '-' + randomUUID() AS version
