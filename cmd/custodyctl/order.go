package main

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"custody/internal/durable"
	"custody/internal/orders"
	"custody/internal/safefile"
)

// The legal intake commands talk to Vault directly with the user's own
// Vault token; Vault's policy (policies/vault/legal-intake.hcl) decides
// what they may do. They never contact custodyd.

// vaultFlags declares the Vault flags every order command but keygen takes
// and returns the function that builds the Intake from them.
func vaultFlags(fs *flag.FlagSet) func() (*orders.Intake, error) {
	addr := fs.String("vault-addr", os.Getenv("VAULT_ADDR"), "Vault `URL` (default $VAULT_ADDR, else http://127.0.0.1:8200)")
	tokenFile := fs.String("vault-token-file", "", "`file` with your Vault token, mode 0400/0600 (default ~/.vault-token)")
	paths := orders.DefaultPaths
	fs.StringVar(&paths.Mount, "kv-mount", paths.Mount, "Vault KV v2 `mount`")
	fs.StringVar(&paths.Orders, "orders-path", paths.Orders, "`path` of the orders under the mount")
	fs.StringVar(&paths.Revocations, "revocations-path", paths.Revocations, "`path` of the revocations under the mount")
	return func() (*orders.Intake, error) { return intakeClient(*addr, *tokenFile, paths) }
}

// orderCommands is `custodyctl order`: each subcommand with its own flags.
func orderCommands(stdin io.Reader, stdout io.Writer, jsonOut bool, timeout time.Duration) *group {
	// withIntake runs f with an Intake and a context bounded by timeout.
	withIntake := func(intake func() (*orders.Intake, error), f func(ctx context.Context, in *orders.Intake) error) error {
		in, err := intake()
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		return f(ctx, in)
	}
	return &group{
		name:    "order",
		summary: "Court orders in Vault, for the legal intake role and signers (docs/orders.md).",
		details: `These commands talk to Vault directly with your own Vault token; Vault's
policy decides what you may do. They never contact custodyd.`,
		subs: []*command{{
			name: "order create", args: "[FILE|-]", maxArgs: 1,
			summary: "Create an order from a JSON body (FILE or stdin) or from flags.",
			details: `The order document is hashed locally (SHA-256); only the hash goes to Vault.
Times are RFC 3339. The order starts with no signatures; its body is
written once and never changes. To amend an order, create a new one with
--supersedes OLD_ID: OLD_ID is revoked at once, and custodyd accepts the
new order only while OLD_ID stays revoked.`,
			setup: func(fs *flag.FlagSet) func([]string) error {
				intake := vaultFlags(fs)
				id := fs.String("id", "", "order `ID`")
				auditor := fs.String("auditor", "", "the auditor `principal` the order names")
				purpose := fs.String("purpose", "", "the audit `purpose`")
				authority := fs.String("authority", "", "the issuing authority (`text`)")
				document := fs.String("document", "", "the court's order document `file` (only its SHA-256 is sent)")
				notBefore := fs.String("not-before", "", "valid from `time` (RFC 3339)")
				notAfter := fs.String("not-after", "", "valid until `time` (RFC 3339)")
				maxUses := fs.Int("max-uses", 0, "how many decrypts the order allows")
				txs := fs.String("transactions", "", "scope: comma-separated transaction `ids`")
				jobs := fs.String("jobs", "", "scope: comma-separated job `ids`")
				createdFrom := fs.String("created-from", "", "scope: envelopes created from `time` (RFC 3339, with --created-until)")
				createdUntil := fs.String("created-until", "", "scope: envelopes created until `time` (RFC 3339, with --created-from)")
				supersedes := fs.String("supersedes", "", "the `ID` of the order this one amends (it is revoked)")
				return func(pos []string) error {
					var o orders.Order
					if len(pos) == 1 {
						raw, err := readInput(pos, stdin)
						if err != nil {
							return err
						}
						dec := json.NewDecoder(strings.NewReader(string(raw)))
						dec.DisallowUnknownFields()
						if err := dec.Decode(&o); err != nil {
							return usageError{msg: fmt.Sprintf("order create: %v", err)}
						}
					} else {
						o = orders.Order{ID: *id, Auditor: *auditor, Purpose: *purpose, Authority: *authority, MaxUses: *maxUses,
							Scope: orders.Scope{Transactions: splitList(*txs), Jobs: splitList(*jobs)}}
						for _, t := range []struct {
							flag, v string
							dst     *time.Time
						}{{"not-before", *notBefore, &o.NotBefore}, {"not-after", *notAfter, &o.NotAfter}} {
							v, err := time.Parse(time.RFC3339, t.v)
							if err != nil {
								return usageError{msg: fmt.Sprintf("order create: --%s: want an RFC 3339 time", t.flag), hint: "e.g. 2026-01-02T15:04:05Z"}
							}
							*t.dst = v
						}
						if *createdFrom != "" || *createdUntil != "" {
							f, err1 := time.Parse(time.RFC3339, *createdFrom)
							u, err2 := time.Parse(time.RFC3339, *createdUntil)
							if err1 != nil || err2 != nil {
								return usageError{msg: "order create: --created-from and --created-until: two RFC 3339 times"}
							}
							o.Scope.CreatedFrom, o.Scope.CreatedUntil = &f, &u
						}
					}
					if o.Version == 0 {
						o.Version = orders.FormatVersion
					}
					if *supersedes != "" {
						if o.Supersedes != "" && o.Supersedes != *supersedes {
							return usageError{msg: "order create: --supersedes differs from the file's supersedes"}
						}
						o.Supersedes = *supersedes
					}
					if *document != "" {
						doc, err := os.ReadFile(*document)
						if err != nil {
							return err
						}
						o.DocumentSHA256 = orders.DocumentHash(sha256.Sum256(doc))
					}
					o.Normalize()
					return withIntake(intake, func(ctx context.Context, in *orders.Intake) error {
						return orderCreate(ctx, in, &o, stdout, jsonOut)
					})
				}
			},
		}, {
			name: "order sign", args: "ID", minArgs: 1, maxArgs: 1,
			summary: "Review an order's body (without --sha256/--body), or sign it.",
			details: `Without --sha256 or --body: show the body Vault holds (canonical form) and
its SHA-256; nothing is signed.
With --key and --sha256 HASH or --body FILE: sign, only if Vault's body is
the one you reviewed: HASH is the SHA-256 that "order sign ID" or
"order show ID" printed, or FILE is your reviewed copy of the body (JSON;
its canonical form must equal Vault's). Anything else is refused and
nothing is signed. The key file is mode 0400/0600; the signer name is
taken from the file unless --signer is given.`,
			setup: func(fs *flag.FlagSet) func([]string) error {
				intake := vaultFlags(fs)
				keyFile := fs.String("key", "", "the signer's private key `file` (order keygen)")
				reviewed := fs.String("sha256", "", "the reviewed body's SHA-256 (64 hex `digits`)")
				bodyFile := fs.String("body", "", "`file` with your reviewed copy of the body")
				signer := fs.String("signer", "", "signer `name` (default: the name in the key file)")
				return func(pos []string) error {
					return withIntake(intake, func(ctx context.Context, in *orders.Intake) error {
						return orderSign(ctx, in, pos[0], *keyFile, *signer, *reviewed, *bodyFile, stdout, jsonOut)
					})
				}
			},
		}, {
			name: "order revoke", args: "ID", minArgs: 1, maxArgs: 1,
			summary: "Write the order's revocation (once; irreversible).",
			setup: func(fs *flag.FlagSet) func([]string) error {
				intake := vaultFlags(fs)
				reason := fs.String("reason", "", "why the order is revoked (`text`, required)")
				return func(pos []string) error {
					if *reason == "" {
						return usageError{msg: "order revoke: --reason is required", hint: "see custodyctl order revoke --help"}
					}
					return withIntake(intake, func(ctx context.Context, in *orders.Intake) error {
						if err := in.Revoke(ctx, pos[0], *reason, currentUser(), time.Now()); err != nil {
							return err
						}
						return printResult(stdout, jsonOut, map[string]any{"id": pos[0], "revoked": true}, fmt.Sprintf("revoked order %s\n", pos[0]))
					})
				}
			},
		}, {
			name: "order show", args: "ID", minArgs: 1, maxArgs: 1,
			summary: "The order, its body's SHA-256, signatures and revocation.",
			setup: func(fs *flag.FlagSet) func([]string) error {
				intake := vaultFlags(fs)
				return func(pos []string) error {
					return withIntake(intake, func(ctx context.Context, in *orders.Intake) error {
						return orderShow(ctx, in, pos[0], stdout, jsonOut)
					})
				}
			},
		}, {
			name: "order list", maxArgs: 0,
			summary: "Order ids.",
			setup: func(fs *flag.FlagSet) func([]string) error {
				intake := vaultFlags(fs)
				return func([]string) error {
					return withIntake(intake, func(ctx context.Context, in *orders.Intake) error {
						ids, err := in.List(ctx)
						if err != nil {
							return err
						}
						if jsonOut {
							return json.NewEncoder(stdout).Encode(map[string]any{"orders": ids})
						}
						for _, id := range ids {
							fmt.Fprintln(stdout, id)
						}
						return nil
					})
				}
			},
		}, {
			name: "order keygen", maxArgs: 0,
			summary: "Make a signer key pair (needs no Vault).",
			details: `FILE (mode 0400, never over an existing file) holds the private key; the
public key is printed as the {"name","public_key"} entry for custodyd's
vault.signers.`,
			setup: func(fs *flag.FlagSet) func([]string) error {
				out := fs.String("out", "", "`file` to create for the private key (required)")
				name := fs.String("name", "", "the signer's `name` (required)")
				return func([]string) error { return orderKeygen(*out, *name, stdout) }
			},
		}},
	}
}

// runOrder runs `custodyctl order …`.
func runOrder(args []string, stdin io.Reader, stdout io.Writer, jsonOut bool, timeout time.Duration) error {
	return orderCommands(stdin, stdout, jsonOut, timeout).execute(args, stdout)
}

// orderCreate writes o to Vault and, for an amendment, revokes the order
// it supersedes.
func orderCreate(ctx context.Context, in *orders.Intake, o *orders.Order, stdout io.Writer, jsonOut bool) error {
	v, err := in.Create(ctx, o)
	if err != nil {
		return err
	}
	if o.Supersedes != "" {
		// The amendment counts only once the old order is revoked
		// (custodyd checks); revoke it now.
		err := in.Revoke(ctx, o.Supersedes, "superseded by "+o.ID, currentUser(), time.Now())
		if err != nil && !errors.Is(err, orders.ErrExists) {
			return fmt.Errorf("created order %s, but revoking the order it supersedes failed: %w; run: custodyctl order revoke %s --reason \"superseded by %s\" (until then custodyd refuses %s)",
				o.ID, err, o.Supersedes, o.ID, o.ID)
		}
	}
	text := fmt.Sprintf("created order %s (version %d, document %s)\nbody sha256 %s\n", o.ID, v, o.DocumentSHA256, o.BodySHA256())
	if o.Supersedes != "" {
		text += fmt.Sprintf("order %s is revoked: superseded by %s\n", o.Supersedes, o.ID)
	}
	text += fmt.Sprintf("it needs its signatures: each signer reviews it with custodyctl order sign %s, then signs with --sha256\n", o.ID)
	return printResult(stdout, jsonOut, map[string]any{"id": o.ID, "version": v, "document_sha256": o.DocumentSHA256,
		"body_sha256": o.BodySHA256(), "supersedes": o.Supersedes}, text)
}

// orderShow prints the order id, its signatures and its revocation.
func orderShow(ctx context.Context, in *orders.Intake, oid string, stdout io.Writer, jsonOut bool) error {
	rec, v, rev, err := in.Show(ctx, oid)
	if err != nil {
		return err
	}
	changed := in.Unchanged(ctx, rec, v)
	if changed != nil && !errors.Is(changed, orders.ErrBodyChanged) {
		return changed
	}
	if jsonOut {
		out := map[string]any{"version": v, "record": rec, "revocation": rev, "body_sha256": rec.Order.BodySHA256(), "body_unchanged": changed == nil}
		if changed != nil {
			out["body_problem"] = changed.Error()
		}
		return json.NewEncoder(stdout).Encode(out)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	printOrder(tw, &rec.Order, v)
	var names []string
	for _, s := range rec.Signatures {
		names = append(names, s.Signer)
	}
	fmt.Fprintf(tw, "signed by\t%s\n", strings.Join(names, ", "))
	if changed != nil {
		fmt.Fprintf(tw, "WARNING\t%v: custodyd refuses this order\n", changed)
	}
	if rev != nil {
		// The revocation is read from Vault without a parser's rules:
		// escape what is not plain text before it reaches a terminal.
		fmt.Fprintf(tw, "REVOKED\t%s by %s: %s\n", rev.Time.Format(time.RFC3339), displayText(rev.By), displayText(rev.Reason))
	}
	return tw.Flush()
}

// orderSign runs `order sign`: without reviewed or bodyFile it prints the
// body Vault holds and its SHA-256 and returns a usage error (nothing is
// signed); with one of them it signs only if Vault's body has that hash.
func orderSign(ctx context.Context, in *orders.Intake, id, keyFile, signer, reviewed, bodyFile string, stdout io.Writer, jsonOut bool) error {
	if reviewed != "" && bodyFile != "" {
		return usageError{msg: "order sign: give --sha256 or --body, not both"}
	}
	reviewed = strings.ToLower(reviewed)
	if reviewed != "" && !isSHA256Hex(reviewed) {
		return usageError{msg: "order sign: --sha256: want the 64 hex digits of the body's SHA-256, as order show prints it"}
	}
	var local *orders.Order
	if bodyFile != "" {
		raw, err := safefile.Read(bodyFile, orders.MaxRecordBytes)
		if err != nil {
			return err
		}
		if local, err = orders.ParseBody(raw); err != nil {
			return usageError{msg: fmt.Sprintf("order sign: --body %s: %v", bodyFile, err)}
		}
		if local.ID != id {
			return usageError{msg: fmt.Sprintf("order sign: --body %s holds order %q, not %q", bodyFile, local.ID, id)}
		}
		reviewed = local.BodySHA256()
	}
	keyHint := keyFile
	if keyHint == "" {
		keyHint = "FILE"
	}
	if reviewed == "" {
		// The review step: show what would be signed, sign nothing.
		rec, v, _, err := in.Show(ctx, id)
		if err != nil {
			return err
		}
		changed := in.Unchanged(ctx, rec, v)
		if changed != nil && !errors.Is(changed, orders.ErrBodyChanged) {
			return changed
		}
		o := &rec.Order
		if jsonOut {
			json.NewEncoder(stdout).Encode(map[string]any{"id": id, "version": v, "body": o, "canonical": string(o.Canonical()),
				"body_sha256": o.BodySHA256(), "body_unchanged": changed == nil, "signed": false})
		} else {
			tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
			printOrder(tw, o, v)
			tw.Flush()
			fmt.Fprintf(stdout, "\ncanonical body (what a signature covers, after the line %q):\n%s\n", fmt.Sprintf("custody court order v%d", o.Version), o.Canonical())
		}
		if changed != nil {
			return fmt.Errorf("do not sign: %w; custodyd refuses this order whatever its signatures, so legal intake must issue a new order id (and investigate who rewrote it)", changed)
		}
		return usageError{msg: fmt.Sprintf("order sign: nothing signed. Compare the body above with the court's order; if it is what you mean to sign, run:\n  custodyctl order sign %s --key %s --sha256 %s\n(or --body FILE with the copy of the body you reviewed)", id, keyHint, o.BodySHA256())}
	}
	if keyFile == "" {
		return usageError{msg: "order sign: --key SIGNER_KEY_FILE is required"}
	}
	key, keyName, err := orders.LoadPrivateKey(keyFile)
	if err != nil {
		return err
	}
	defer clear(key)
	if signer != "" {
		keyName = signer
	}
	if keyName == "" {
		return usageError{msg: "order sign: the key file names no signer; give --signer NAME"}
	}
	v, err := in.Sign(ctx, id, keyName, key, reviewed)
	var mismatch *orders.ReviewMismatchError
	if errors.As(err, &mismatch) {
		diff := ""
		if local != nil {
			diff = fmt.Sprintf(" (Vault's body differs from %s in: %s)", bodyFile, strings.Join(orders.DiffFields(local, mismatch.InVault), ", "))
		}
		return fmt.Errorf("%w%s. The body changed since your review, or you reviewed another body: run custodyctl order sign %s to see what Vault holds now, review it again against the court's order, and ask legal intake why it differs",
			err, diff, id)
	}
	if errors.Is(err, orders.ErrBodyChanged) {
		return fmt.Errorf("nothing signed: %w; custodyd refuses this order whatever its signatures, so legal intake must issue a new order id", err)
	}
	if err != nil {
		return err
	}
	return printResult(stdout, jsonOut, map[string]any{"id": id, "version": v, "signer": keyName, "body_sha256": reviewed},
		fmt.Sprintf("signed order %s as %s (version %d, body sha256 %s)\n", id, keyName, v, reviewed))
}

// printOrder writes an order's fields, for show and for the review step of
// sign.
func printOrder(tw io.Writer, o *orders.Order, v int) {
	fmt.Fprintf(tw, "order\t%s (KV version %d, format %d)\n", o.ID, v, o.Version)
	if o.Supersedes != "" {
		fmt.Fprintf(tw, "supersedes\t%s (custodyd accepts this order only while %s is revoked)\n", o.Supersedes, o.Supersedes)
	}
	fmt.Fprintf(tw, "auditor\t%s\npurpose\t%s\nauthority\t%s\ndocument sha256\t%s\n", o.Auditor, o.Purpose, o.Authority, o.DocumentSHA256)
	fmt.Fprintf(tw, "valid\t%s – %s\nmax uses\t%d\n", o.NotBefore.Format(time.RFC3339), o.NotAfter.Format(time.RFC3339), o.MaxUses)
	if len(o.Scope.Transactions) > 0 {
		fmt.Fprintf(tw, "transactions\t%s\n", strings.Join(o.Scope.Transactions, ", "))
	}
	if len(o.Scope.Jobs) > 0 {
		fmt.Fprintf(tw, "jobs\t%s\n", strings.Join(o.Scope.Jobs, ", "))
	}
	if o.Scope.CreatedFrom != nil {
		fmt.Fprintf(tw, "created\t%s – %s\n", o.Scope.CreatedFrom.Format(time.RFC3339), o.Scope.CreatedUntil.Format(time.RFC3339))
	}
	fmt.Fprintf(tw, "body sha256\t%s\n", o.BodySHA256())
}

// displayText escapes control and other non-graphic characters (Go
// string escapes), so that text from Vault cannot drive the terminal.
func displayText(s string) string {
	q := strconv.QuoteToGraphic(s)
	return q[1 : len(q)-1]
}

func isSHA256Hex(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !('0' <= s[i] && s[i] <= '9' || 'a' <= s[i] && s[i] <= 'f') {
			return false
		}
	}
	return true
}

// currentUser is the Unix user name for a revocation's "by", or "".
func currentUser() string {
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return ""
}

// intakeClient reads the user's Vault token from its file (never from
// argv) and returns an Intake on it.
func intakeClient(addr, tokenFile string, paths orders.Paths) (*orders.Intake, error) {
	if addr == "" {
		addr = "http://127.0.0.1:8200"
	}
	if tokenFile == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return nil, usageError{msg: "order: no home directory; give --vault-token-file"}
		}
		tokenFile = filepath.Join(home, ".vault-token")
	}
	tok, err := orders.ReadSecretFile(tokenFile)
	if err != nil {
		return nil, err
	}
	defer clear(tok)
	c, err := orders.NewClient(addr, os.Getenv("VAULT_CACERT"))
	if err != nil {
		return nil, err
	}
	c.SetToken(string(tok))
	return orders.NewIntake(c, paths), nil
}

// orderKeygen writes a new signer key to out (mode 0400, never over an
// existing file) and prints the public half for the daemon's configuration.
func orderKeygen(out, name string, stdout io.Writer) error {
	if out == "" || name == "" {
		return usageError{msg: "usage: custodyctl order keygen --out FILE --name NAME"}
	}
	pub, key, err := orders.GenerateKey()
	if err != nil {
		return err
	}
	defer clear(key)
	pemBytes, err := orders.MarshalPrivateKey(key, name)
	if err != nil {
		return err
	}
	defer clear(pemBytes)
	if err := durable.Create(out, pemBytes, 0o400); err != nil {
		return err
	}
	entry := orders.Signer{Name: name, PublicKey: base64.StdEncoding.EncodeToString(pub)}
	if _, err := entry.Key(); err != nil { // cannot fail; keeps the printed entry honest
		return err
	}
	b, _ := json.Marshal(entry)
	fmt.Fprintf(stdout, "%s\n", b)
	return nil
}

func printResult(w io.Writer, jsonOut bool, v any, text string) error {
	if jsonOut {
		return json.NewEncoder(w).Encode(v)
	}
	_, err := io.WriteString(w, text)
	return err
}

func splitList(s string) []string {
	if s == "" {
		return nil
	}
	var out []string
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}
