# The legal intake role's Vault policy: create and sign court orders, revoke
# them, read and list them. Assumes the KV v2 mount "secret" and the default
# paths of internal/orders. Used through `custodyctl order` with the user's
# own Vault token.

# Orders: create (cas=0) and update (each signer adds a signature with
# check-and-set). Vault cannot limit an update to the signatures, so the
# daemon enforces that the body is written once: it accepts a record only
# if its body is exactly the body of KV version 1 (docs/orders.md). This
# policy grants nothing on secret/delete/, secret/destroy/ or metadata
# writes, so its holder cannot remove version 1 either. An amendment is a
# new order id (custodyctl order create --supersedes).
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
# Vault refuses to overwrite it, and without "delete" to remove it. (A
# writer who can delete or destroy its versions still cannot revive the
# order: custodyd counts a deleted revocation; only deleting its metadata
# would, and no shipped policy allows that.)
path "secret/data/custody/revocations/*" {
  capabilities = ["create", "read"]
}

# Use counters: nothing. The intake role can neither read nor reset them.
