package main

import (
	"flag"
	"io"
)

// executor is a command or a group of commands.
type executor interface {
	execute(args []string, stdout io.Writer) error
}

// noFlags is the setup of a command without flags of its own.
func noFlags(run func(args []string) error) func(*flag.FlagSet) func([]string) error {
	return func(*flag.FlagSet) func([]string) error { return run }
}

// daemonCommands are the commands that talk to custodyd, each with its own
// flags and generated --help.
func (c *cli) daemonCommands(stdin io.Reader, stderr io.Writer) map[string]executor {
	return map[string]executor{
		"health": &command{name: "health", maxArgs: 0,
			summary: "Token, capabilities, daemon keys, policy, and who you are.",
			setup:   noFlags(func([]string) error { return c.health() })},
		"participants": &group{name: "participants",
			summary: "Participants' X25519 key pairs on the HSM.",
			subs: []*command{{name: "participants register", args: "ID", minArgs: 1, maxArgs: 1,
				summary: "Create participant ID's key pair on the HSM (admin role).",
				setup:   noFlags(func(pos []string) error { return c.participantRegister(pos[0]) }),
			}, {name: "participants show", args: "ID", minArgs: 1, maxArgs: 1,
				summary: "List ID's key versions and public keys.",
				setup:   noFlags(func(pos []string) error { return c.participantShow(pos[0]) }),
			}, c.statusCommand(stdin)}}, // status.go
		"encrypt": &command{name: "encrypt", args: "[FILE|-]", maxArgs: 1,
			summary: "Seal a transaction; FILE (or stdin) holds the request.",
			details: `The request is {"transaction_id","job_id","public_data":{},"confidential":{},"participants":[]},
or {"items":[…]} for a batch (printed as JSON).`,
			setup: noFlags(func(pos []string) error { return c.encrypt(pos, stdin) })},
		"decrypt": &command{name: "decrypt", args: "[FILE|-]", maxArgs: 1,
			summary: "Open an envelope, as a participant for a purpose.",
			details: `FILE (or stdin) holds the request {"envelope","as","purpose","fields":[…]}
or {"items":[…]}; or give it with --envelope-file, --as and --purpose.`,
			setup: func(fs *flag.FlagSet) func([]string) error {
				f := decryptFlags{
					envFile: fs.String("envelope-file", "", "`file` with the envelope text, or encrypt's JSON output"),
					as:      fs.String("as", "", "participant `id` to act as"),
					purpose: fs.String("purpose", "", "why you read the data: a `purpose` the policy names"),
					fields:  fs.String("fields", "", "comma-separated `fields` to return (default: all the purpose may see)"),
					txid:    fs.String("transaction-id", "", "refuse unless the envelope belongs to this transaction `id`"),
				}
				return func(pos []string) error { return c.decrypt(pos, stdin, f) }
			}},
		"audit": &group{name: "audit",
			summary: "Audit access under a court order (auditor role).",
			subs: []*command{{name: "audit decrypt", args: "[FILE|-]", maxArgs: 1,
				summary: "Open an envelope through its escrow stanza under a court order.",
				details: `Give --envelope-file, --order and --purpose, or {"envelope","authorization","purpose"}
(or {"items":[…]}) in FILE or on stdin. Vault must hold a valid, signed,
in-scope, unexhausted order naming you (docs/orders.md).`,
				setup: func(fs *flag.FlagSet) func([]string) error {
					envFile := fs.String("envelope-file", "", "`file` with the envelope text, or encrypt's JSON output")
					order := fs.String("order", "", "the court order's `id` (Vault)")
					purpose := fs.String("purpose", "", "the order's `purpose`")
					return func(pos []string) error { return c.audit(pos, stdin, envFile, order, purpose) }
				}}}},
		"envelope": &group{name: "envelope",
			summary: "Envelopes without opening them.",
			subs: []*command{{name: "envelope inspect", args: "[FILE|-]", maxArgs: 1,
				summary: "Show an envelope's header; no key use, no plaintext.",
				details: `FILE (or stdin) holds the envelope text, or encrypt's JSON output. Shows the
version, transaction and job id, created-at, sealed_by, participants with key
versions, escrow key version, public data, field names and sizes, and whether
the header signature verifies under the daemon's signing keys.`,
				setup: noFlags(func(pos []string) error { return c.envelopeInspect(pos, stdin) }),
			}}},
		"keys": &group{name: "keys",
			summary: "Key versions, rotation, retirement and proof of possession.",
			subs: []*command{{name: "keys list", maxArgs: 0,
				summary: "Keys, versions, state, age, what is due (admin).",
				setup:   noFlags(func([]string) error { return c.keysList() }),
			}, {name: "keys rotate", args: "ID", minArgs: 1, maxArgs: 1,
				summary: "Create ID's next key version and make it active (admin).",
				setup:   noFlags(func(pos []string) error { return c.keysRotate(pos[0]) }),
			}, {name: "keys retire", args: "ID VERSION", minArgs: 2, maxArgs: 2,
				summary: "Destroy VERSION of ID on the token, for good (admin).",
				details: `Retiring is irreversible: give --confirm-rewrapped and --count N, N being the
envelope count your last custodyctl rewrap printed; or, when the envelopes live in
PostgreSQL, --store DSN: the table is checked instead (refused while any row still
has a stanza at VERSION or older; the count sent is the rows checked).`,
				setup: func(fs *flag.FlagSet) func([]string) error {
					confirm := fs.Bool("confirm-rewrapped", false, "confirm that every envelope was rewrapped off this version")
					count := fs.Int64("count", -1, "the envelope count of the last rewrap run")
					dsn := fs.String("store", "", "check the PostgreSQL store at `DSN` instead of trusting --count (docs/store.md)")
					return func(pos []string) error { return c.keysRetire(pos, confirm, count, *dsn) }
				},
			}, {name: "keys prove", args: "ID", minArgs: 1, maxArgs: 1,
				summary: "Check that the HSM holds ID's private key.",
				details: `A challenge with a fresh ephemeral key and nonce, verified here against the
published public key (participants show, or --public).`,
				setup: func(fs *flag.FlagSet) func([]string) error {
					version := fs.Uint("version", 0, "key version (default: the active one)")
					public := fs.String("public", "", "the published public key to check against, `base64` (default: from participants show)")
					return func(pos []string) error { return c.keysProve(pos, version, public) }
				},
			}}},
		"rewrap": &command{name: "rewrap", maxArgs: 0,
			summary: "Move envelopes to the active key versions: JSON-lines files, or PostgreSQL rows in place; resumable.",
			details: `Files: --in holds JSON lines {"envelope":"…","ref":"…"} ("ref" optional, echoed back).
--out gets one JSON line per input line, in order:
  {"line":N,"ref":…,"envelope":…,"changed":true|false,"moved":[…]}  or  {"line":N,"ref":…,"error":{…}}
Progress is saved in the state file (default OUT.state) after every chunk; run the same
command again after an interruption to resume without redoing finished lines.

In place: --postgres DSN rewraps every row of the store (docs/store.md) that has a stanza
below the daemon's active versions, --batch rows per daemon call and SQL transaction,
each row written only if the application did not change it meanwhile (else read again
and retried). Rows the daemon refuses (tampered, key destroyed) are listed and skipped.
The table is the resume state: after any interruption run it again. Progress: a bar
on a terminal, JSON lines otherwise. The run paces itself to spare live traffic: when the
daemon reports that its live requests' p99 grew past --live-slowdown times their p99 with
no bulk work running, it slows down (20 % per 4 s, to 5 rows/s at least) and shrinks its
pages, then speeds up again while they keep up (docs/store.md, "Pacing"); --rate caps
rows/s on top.`,
			setup: func(fs *flag.FlagSet) func([]string) error {
				in := fs.String("in", "", "input `file`: JSON lines")
				out := fs.String("out", "", "output `file`: JSON lines")
				statePath := fs.String("state", "", "resume state `file` (default OUT.state)")
				chunk := fs.Int("chunk", 500, "lines per request")
				dsn := fs.String("postgres", "", "rewrap the rows of the PostgreSQL store at `DSN` in place instead (no password in it: PGPASSFILE)")
				batch := fs.Int("batch", 200, "with --postgres: rows per daemon call and SQL transaction")
				rate := fs.Float64("rate", 0, "with --postgres: at most this many `rows/s` (0: no limit)")
				slowdown := fs.Float64("live-slowdown", 2, "with --postgres: slow down while the daemon's live p99 is past this `factor` of its idle p99 (0: never)")
				return func([]string) error {
					if *dsn != "" {
						if *in != "" || *out != "" {
							return usageError{msg: "rewrap: give --postgres, or --in and --out, not both", hint: "see custodyctl rewrap --help"}
						}
						return c.rewrapStore(*dsn, rewrapOpts{batch: *batch, rate: *rate, liveSlowdown: *slowdown}, stderr)
					}
					return c.rewrap(in, out, statePath, chunk, stderr)
				}
			}},
		"store": c.storeGroup(stdin),
	}
}
