-- A direct Kafka producer signs its records with its API key (streams/contract/signing.py), so
-- the gate needs the key to check the signature. It is kept sealed: AES-256-GCM under the
-- server secret's "api-key" subkey, the key id as associated data (a sealed copy moved to another
-- row does not open). Keys made before this column have none: they work through the HTTP API,
-- and a direct producer using one is refused (auth.key_not_sealed) until it is re-created.
ALTER TABLE api_keys ADD COLUMN key_sealed bytea;
