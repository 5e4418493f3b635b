# The legal intake role's Vault policy: create and sign court orders, revoke
# them, read and list them. Assumes the KV v2 mount "secret" and the default
# paths of internal/orders. Used through `custodyctl order` with the user's
# own Vault token.

# Orders: create (cas=0) and update (each signer adds a signature with
# check-and-set). An order body cannot usefully be edited: every signature
# covers it, so an edited body has no valid signature.
path "secret/data/custody/orders/*" {
  capabilities = ["create", "read", "update"]
}

path "secret/metadata/custody/orders/" {
  capabilities = ["list"]
}

path "secret/metadata/custody/orders/*" {
  capabilities = ["read", "list"]
}

# Revocations: create only. A revocation is written once; without "update"
# Vault refuses to overwrite it, and without "delete" to remove it.
path "secret/data/custody/revocations/*" {
  capabilities = ["create", "read"]
}

# Use counters: nothing. The intake role can neither read nor reset them.
