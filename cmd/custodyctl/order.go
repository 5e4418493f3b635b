package main

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"custody/internal/orders"
)

// The legal intake commands talk to Vault directly with the user's own
// Vault token; Vault's policy (policies/vault/legal-intake.hcl) decides
// what they may do. They never contact custodyd.

const orderUsage = `custodyctl order — court orders in Vault, for the legal intake role and signers

  order create [FILE|-] [--document FILE]
        Create an order from a JSON body (docs/orders.md) or from flags:
        --id ID --auditor PRINCIPAL --purpose P --authority TEXT --document FILE
        --not-before T --not-after T --max-uses N
        [--transactions a,b] [--jobs a,b] [--created-from T --created-until T]
        The order document is hashed locally (SHA-256); only the hash goes to Vault.
        Times are RFC 3339. The order starts with no signatures.
  order sign ID --key SIGNER_KEY_FILE [--signer NAME]
        Add your signature (the key file is mode 0400/0600; the signer name is
        taken from the file unless --signer is given).
  order revoke ID --reason TEXT     Write the order's revocation (once; irreversible).
  order show ID                     The order, its signatures and revocation.
  order list                        Order ids.
  order keygen --out FILE --name NAME
        Make a signer key pair: FILE (mode 0400) holds the private key; the
        public key is printed as the {"name","public_key"} entry for custodyd's
        vault.signers.

Vault flags (every subcommand but keygen):
  --vault-addr URL        default $VAULT_ADDR, else http://127.0.0.1:8200
  --vault-token-file F    default ~/.vault-token (mode 0400/0600)
  --kv-mount M --orders-path P --revocations-path P   default secret, custody/orders, custody/revocations
`

// runOrder runs `custodyctl order …`.
func runOrder(args []string, stdin io.Reader, stdout io.Writer, jsonOut bool, timeout time.Duration) error {
	if len(args) == 0 || args[0] == "help" || args[0] == "--help" || args[0] == "-h" {
		fmt.Fprint(stdout, orderUsage)
		if len(args) == 0 {
			return usageError{"order: a subcommand is required"}
		}
		return nil
	}
	sub, args := args[0], args[1:]
	var pos []string // positional arguments before the flags
	for len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		pos, args = append(pos, args[0]), args[1:]
	}
	fs := flag.NewFlagSet("order "+sub, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	vaultAddr := fs.String("vault-addr", os.Getenv("VAULT_ADDR"), "")
	tokenFile := fs.String("vault-token-file", "", "")
	paths := orders.DefaultPaths
	fs.StringVar(&paths.Mount, "kv-mount", paths.Mount, "")
	fs.StringVar(&paths.Orders, "orders-path", paths.Orders, "")
	fs.StringVar(&paths.Revocations, "revocations-path", paths.Revocations, "")
	// create
	id := fs.String("id", "", "")
	auditor := fs.String("auditor", "", "")
	purpose := fs.String("purpose", "", "")
	authority := fs.String("authority", "", "")
	document := fs.String("document", "", "")
	notBefore := fs.String("not-before", "", "")
	notAfter := fs.String("not-after", "", "")
	maxUses := fs.Int("max-uses", 0, "")
	txs := fs.String("transactions", "", "")
	jobs := fs.String("jobs", "", "")
	createdFrom := fs.String("created-from", "", "")
	createdUntil := fs.String("created-until", "", "")
	// sign, revoke, keygen
	keyFile := fs.String("key", "", "")
	signer := fs.String("signer", "", "")
	reason := fs.String("reason", "", "")
	out := fs.String("out", "", "")
	name := fs.String("name", "", "")
	if err := fs.Parse(args); err != nil {
		return usageError{fmt.Sprintf("order %s: %v (see custodyctl order help)", sub, err)}
	}
	if fs.NArg() > 0 {
		pos = append(pos, fs.Args()...)
	}
	one := func() (string, error) {
		if len(pos) != 1 {
			return "", usageError{fmt.Sprintf("usage: custodyctl order %s ID …", sub)}
		}
		return pos[0], nil
	}
	if sub == "keygen" {
		return orderKeygen(*out, *name, stdout)
	}

	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	in, err := intakeClient(*vaultAddr, *tokenFile, paths)
	if err != nil {
		return err
	}
	switch sub {
	case "create":
		var o orders.Order
		if len(pos) > 1 {
			return usageError{"order create: at most one input file"}
		}
		if len(pos) == 1 {
			raw, err := readInput(pos, stdin)
			if err != nil {
				return err
			}
			dec := json.NewDecoder(strings.NewReader(string(raw)))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&o); err != nil {
				return usageError{fmt.Sprintf("order create: %v", err)}
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
					return usageError{fmt.Sprintf("order create: --%s: want an RFC 3339 time", t.flag)}
				}
				*t.dst = v
			}
			if *createdFrom != "" || *createdUntil != "" {
				f, err1 := time.Parse(time.RFC3339, *createdFrom)
				u, err2 := time.Parse(time.RFC3339, *createdUntil)
				if err1 != nil || err2 != nil {
					return usageError{"order create: --created-from and --created-until: two RFC 3339 times"}
				}
				o.Scope.CreatedFrom, o.Scope.CreatedUntil = &f, &u
			}
		}
		if o.Version == 0 {
			o.Version = orders.FormatVersion
		}
		if *document != "" {
			doc, err := os.ReadFile(*document)
			if err != nil {
				return err
			}
			o.DocumentSHA256 = orders.DocumentHash(sha256.Sum256(doc))
		}
		o.Normalize()
		v, err := in.Create(ctx, &o)
		if err != nil {
			return err
		}
		return printResult(stdout, jsonOut, map[string]any{"id": o.ID, "version": v, "document_sha256": o.DocumentSHA256},
			fmt.Sprintf("created order %s (version %d, document %s); it needs its signatures: custodyctl order sign %s --key FILE\n", o.ID, v, o.DocumentSHA256, o.ID))
	case "sign":
		oid, err := one()
		if err != nil {
			return err
		}
		if *keyFile == "" {
			return usageError{"order sign: --key SIGNER_KEY_FILE is required"}
		}
		key, keyName, err := orders.LoadPrivateKey(*keyFile)
		if err != nil {
			return err
		}
		defer clear(key)
		if *signer != "" {
			keyName = *signer
		}
		if keyName == "" {
			return usageError{"order sign: the key file names no signer; give --signer NAME"}
		}
		v, err := in.Sign(ctx, oid, keyName, key)
		if err != nil {
			return err
		}
		return printResult(stdout, jsonOut, map[string]any{"id": oid, "version": v, "signer": keyName},
			fmt.Sprintf("signed order %s as %s (version %d)\n", oid, keyName, v))
	case "revoke":
		oid, err := one()
		if err != nil {
			return err
		}
		if *reason == "" {
			return usageError{"order revoke: --reason is required"}
		}
		by := ""
		if u, err := user.Current(); err == nil {
			by = u.Username
		}
		if err := in.Revoke(ctx, oid, *reason, by, time.Now()); err != nil {
			return err
		}
		return printResult(stdout, jsonOut, map[string]any{"id": oid, "revoked": true}, fmt.Sprintf("revoked order %s\n", oid))
	case "show":
		oid, err := one()
		if err != nil {
			return err
		}
		rec, v, rev, err := in.Show(ctx, oid)
		if err != nil {
			return err
		}
		if jsonOut {
			return json.NewEncoder(stdout).Encode(map[string]any{"version": v, "record": rec, "revocation": rev})
		}
		o := rec.Order
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintf(tw, "order\t%s (KV version %d)\n", o.ID, v)
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
		var names []string
		for _, s := range rec.Signatures {
			names = append(names, s.Signer)
		}
		fmt.Fprintf(tw, "signed by\t%s\n", strings.Join(names, ", "))
		if rev != nil {
			fmt.Fprintf(tw, "REVOKED\t%s by %s: %s\n", rev.Time.Format(time.RFC3339), rev.By, rev.Reason)
		}
		return tw.Flush()
	case "list":
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
	}
	return usageError{fmt.Sprintf("unknown order subcommand %q (see custodyctl order help)", sub)}
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
			return nil, usageError{"order: no home directory; give --vault-token-file"}
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
		return usageError{"usage: custodyctl order keygen --out FILE --name NAME"}
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
	f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o400)
	if err != nil {
		return err
	}
	if _, err := f.Write(pemBytes); err != nil {
		f.Close()
		os.Remove(out)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
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
