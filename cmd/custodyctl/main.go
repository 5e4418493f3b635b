// Command custodyctl is the command-line client of custodyd. It talks to the
// daemon's Unix socket, so the daemon knows the caller by its Unix user:
// run it as the user the policy names.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"custody/internal/api"
	"custody/internal/client"
)

const usage = `custodyctl — client of custodyd, the key custody daemon

Usage:
  custodyctl [--socket PATH] [--json] [--timeout D] COMMAND [ARGS]

Commands:
  health                        Token, capabilities, daemon keys, policy, and who you are.
  participants register ID      Create participant ID's X25519 key pair on the HSM (admin role).
  participants show ID          List ID's key versions and public keys.
  participants status ID        Show or change ID's compliance status (compliance role); see its --help.
  mfa enroll|revoke PRINCIPAL   A principal's second factor (TOTP) on the HSM (admin role); see custodyctl mfa --help.
  encrypt [FILE|-]              Seal a transaction. FILE (or stdin) holds the request:
                                  {"transaction_id","job_id","public_data":{},"confidential":{},"participants":[]}
                                or {"items":[…]} for a batch.
  decrypt [FILE|-]              Open an envelope. FILE (or stdin) holds the request:
                                  {"envelope","as","purpose","fields":[…]} or {"items":[…]};
                                or give it with flags instead:
                                  --envelope-file F  a file with the envelope text, or encrypt's JSON output
                                  --as ID --purpose P [--fields a,b] [--transaction-id T]

  envelope inspect [FILE|-]     Show an envelope's header (version, transaction, sealed_by, recipients,
                                field names and sizes, signature valid or not); no key use, no plaintext.
  keys list|rotate|retire|prove  Key versions, rotation, retirement, proof of possession; see custodyctl keys --help.
  rewrap --in FILE --out FILE   Move envelopes (JSON lines) to the active key versions, resumable;
  rewrap --postgres DSN           or every PostgreSQL row that needs it, in place (docs/store.md).
  store init|put|get|find|status
                                Confidential transactions in PostgreSQL: seal and insert, open a row,
                                find rows by public columns, rows per key version; see custodyctl store help.

  log pin|verify|prove|check-proof|query|report
                                Offline reviewer tools on a copied access-log directory
                                (no daemon needed; verify with a key you pinned); see custodyctl log --help.
  order create|sign|revoke|show|list|keygen
                                Court orders in Vault for the legal intake role and signers,
                                with your own Vault token; see custodyctl order help.

  audit decrypt                 Open an envelope through its escrow stanza under a court order (auditor role):
                                  --envelope-file F --order ID --purpose P, or {"envelope","authorization","purpose"}
                                  on stdin / in a file, or {"items":[…]}. Vault must hold a valid, signed,
                                  in-scope, unexhausted order naming you (docs/orders.md).

  ceremony request|approve|status|genesis|backup|share|restore|rotate|cosign|verify
                                Escrow key ceremonies for security officers (role officer, listed
                                in the officers file); see custodyctl ceremony help.

Global flags:
  --socket PATH   daemon socket (default $CUSTODY_SOCKET, else run/custodyd.sock)
  --json          print the daemon's answer as JSON (its wire form, docs/api.md)
  --timeout D     give up after D (default 60s)
  --totp          prompt on the terminal for your second factor's code (requests the policy makes need one)
  --totp-stdin    read that code from the first line of stdin instead (never give it as an argument)

Exit status: 0 on success; 1 when the daemon answered an error, printed as
"custodyctl: CODE: message" (e.g. purpose_denied; codes: docs/api.md), or
when a local step failed ("custodyctl: error: …"); 2 on a usage error
("custodyctl: error: …", then "hint: …"). COMMAND --help shows its flags.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// cli is one invocation: the global flags, the daemon's client and where
// answers are printed.
type cli struct {
	socket  string
	json    bool
	timeout time.Duration
	out     io.Writer
	d       *client.Client // set once the flags are parsed
	totp    string         // the second factor's code (--totp, --totp-stdin), sent with every request
}

// usageError is a mistake in the command line or its input, found before
// anything was done: exit status 2, printed as "custodyctl: error: msg"
// and, when there is something to do about it, "hint: hint".
type usageError struct{ msg, hint string }

func (e usageError) Error() string { return e.msg }

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("custodyctl", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported below
	defSocket := os.Getenv("CUSTODY_SOCKET")
	if defSocket == "" {
		defSocket = "run/custodyd.sock"
	}
	c := &cli{out: stdout}
	fs.StringVar(&c.socket, "socket", defSocket, "daemon socket")
	fs.BoolVar(&c.json, "json", false, "print the daemon's answer as JSON")
	fs.DurationVar(&c.timeout, "timeout", 60*time.Second, "request timeout")
	totpTTY := fs.Bool("totp", false, "prompt on the terminal for your second factor's code")
	totpStdin := fs.Bool("totp-stdin", false, "read your second factor's code from the first line of stdin")
	var err error
	if err = fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, usage)
			return 0
		}
		return report(stderr, usageError{msg: flagError(err), hint: "see custodyctl --help"})
	}
	if *totpTTY || *totpStdin {
		if stdin, err = c.readTOTP(*totpTTY, stdin, stderr); err != nil { // mfa.go
			return report(stderr, err)
		}
	}
	c.d = client.New(c.socket)
	rest := fs.Args()
	if len(rest) == 0 {
		fmt.Fprint(stderr, usage)
		return report(stderr, usageError{msg: "a command is required", hint: "see custodyctl --help"})
	}
	if e, ok := c.daemonCommands(stdin, stderr)[rest[0]]; ok {
		return report(stderr, e.execute(rest[1:], stdout))
	}
	switch cmd := rest[0]; cmd {
	case "log":
		err = logGroup(stdout).execute(rest[1:], stdout)
	case "order":
		err = runOrder(rest[1:], stdin, stdout, c.json, c.timeout)
	case "ceremony":
		err = c.ceremonyGroup(stdin).execute(rest[1:], stdout)
	case "mfa":
		err = c.mfaGroup().execute(rest[1:], stdout) // mfa.go
	case "help":
		fmt.Fprint(stdout, usage)
	default:
		err = usageError{msg: fmt.Sprintf("unknown command %q", cmd), hint: "see custodyctl --help"}
	}
	return report(stderr, err)
}

// report prints err on stderr and returns the exit status: 0 for nil; 1
// for the daemon's or Vault's refusal or a local failure; 2 for a
// usageError. The daemon's errors keep their form "custodyctl: CODE:
// message" (scripts and tests match the code); every other error is
// "custodyctl: error: message", then "hint: …" for a usageError that
// has one.
func report(stderr io.Writer, err error) int {
	var ue usageError
	var ae *api.Error
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ue):
		fmt.Fprintln(stderr, "custodyctl: error:", err)
		if ue.hint != "" {
			fmt.Fprintln(stderr, "hint:", ue.hint)
		}
		return 2
	case errors.As(err, &ae):
		fmt.Fprintln(stderr, "custodyctl:", err)
		return 1
	default:
		fmt.Fprintln(stderr, "custodyctl: error:", err)
		return 1
	}
}

// ctx bounds one command's daemon calls by --timeout.
func (c *cli) ctx() (context.Context, context.CancelFunc) {
	ctx := context.Background()
	if c.totp != "" {
		ctx = client.WithTOTP(ctx, c.totp)
	}
	return context.WithTimeout(ctx, c.timeout)
}

// printJSON prints v, the daemon's answer, as indented JSON: the wire form
// (package api) the daemon sent.
func (c *cli) printJSON(v any) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return err
	}
	_, err := c.out.Write(buf.Bytes())
	return err
}

// answer prints v with --json, else text's lines.
func (c *cli) answer(v any, text func(w io.Writer)) error {
	if c.json {
		return c.printJSON(v)
	}
	text(c.out)
	return nil
}

func (c *cli) health() error {
	ctx, cancel := c.ctx()
	defer cancel()
	h, err := c.d.Health(ctx)
	if err != nil {
		return err
	}
	err = c.answer(h, func(w io.Writer) {
		fmt.Fprintf(w, "status:       %s\n", h.Status)
		fmt.Fprintf(w, "daemon:       %s\n", h.Version)
		fmt.Fprintf(w, "token:        %q serial %s (%s %s), %d sessions, %d rebuilds\n", h.Token.Label, h.Token.Serial, h.Token.Manufacturer, h.Token.Model, h.Token.Sessions, h.Token.Rebuilds)
		fmt.Fprintf(w, "capabilities: %s\n", h.Profile)
		fmt.Fprintf(w, "escrow key:   %s\n", h.EscrowKey)
		fmt.Fprintf(w, "signing key:  %s\n", h.SigningKey)
		fmt.Fprintf(w, "policy:       %s\n", h.Policy)
		fmt.Fprintf(w, "you are:      %s\n", h.Principal)
		if h.ParticipantStatus != "" {
			fmt.Fprintf(w, "participant status: %s\n", h.ParticipantStatus)
		}
	})
	if err == nil && h.Status != "ok" {
		err = fmt.Errorf("daemon is not healthy: %s", h.Status)
	}
	return err
}

func (c *cli) participantRegister(id string) error {
	ctx, cancel := c.ctx()
	defer cancel()
	r, err := c.d.Register(ctx, id)
	if err != nil {
		return err
	}
	return c.answer(r, func(w io.Writer) {
		fmt.Fprintf(w, "registered %s: key v%d %s\npublic key: %s\nsha256:     %s\n", r.ID, r.Version, r.Algorithm, r.PublicKey, r.SHA256)
	})
}

func (c *cli) participantShow(id string) error {
	ctx, cancel := c.ctx()
	defer cancel()
	r, err := c.d.Participant(ctx, id)
	if err != nil {
		return err
	}
	return c.answer(r, func(w io.Writer) {
		fmt.Fprintf(w, "%s (active version %d)\n", r.ID, r.Active)
		for _, v := range r.Versions {
			fmt.Fprintf(w, "  v%d  %s  created %s\n      public %s\n      sha256 %s\n", v.Version, v.Algorithm, stamp(v.Created), v.PublicKey, v.SHA256)
		}
	})
}

// readInput reads the request JSON from the one file argument, or stdin.
func readInput(args []string, stdin io.Reader) ([]byte, error) {
	var r io.Reader = stdin
	switch {
	case len(args) > 1:
		return nil, usageError{msg: "at most one input file"}
	case len(args) == 1 && args[0] != "-":
		f, err := os.Open(args[0])
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	return io.ReadAll(io.LimitReader(r, 256<<20))
}

func isBatch(body []byte) bool {
	var probe struct {
		Items json.RawMessage `json:"items"`
	}
	return json.Unmarshal(body, &probe) == nil && probe.Items != nil
}

// strictJSON decodes a request the user wrote as the daemon would: unknown
// fields and trailing data are refused, before anything is sent.
func strictJSON(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil && dec.More() {
		err = errors.New("trailing data after the JSON object")
	}
	if err != nil {
		return usageError{msg: "the request: " + err.Error(), hint: "docs/api.md lists each request's fields"}
	}
	return nil
}

// oneOrBatch sends the request in body, one T or {"items":[T…]}, with one
// or many. One answer is printed by text (or as JSON with --json); a
// batch's answers always as JSON, the only form they are useful in.
func oneOrBatch[T, R any](c *cli, body []byte, one func(context.Context, T) (*R, error),
	many func(context.Context, []T) ([]api.BatchResult[R], error), text func(io.Writer, *R)) error {
	ctx, cancel := c.ctx()
	defer cancel()
	if isBatch(body) {
		var in api.Batch[T]
		if err := strictJSON(body, &in); err != nil {
			return err
		}
		res, err := many(ctx, in.Items)
		if err != nil {
			return err
		}
		return c.printJSON(api.BatchResults[R]{Results: res})
	}
	var in T
	if err := strictJSON(body, &in); err != nil {
		return err
	}
	r, err := one(ctx, in)
	if err != nil {
		return err
	}
	return c.answer(r, func(w io.Writer) { text(w, r) })
}

func (c *cli) encrypt(args []string, stdin io.Reader) error {
	body, err := readInput(args, stdin)
	if err != nil {
		return err
	}
	return oneOrBatch(c, body, c.d.Encrypt, c.d.EncryptBatch, func(w io.Writer, r *api.Encrypted) {
		var who []string
		for _, p := range r.Recipients {
			who = append(who, fmt.Sprintf("%s (v%d)", p.ID, p.KeyVersion))
		}
		fmt.Fprintf(w, "sealed transaction %s for %s + escrow (v%d)\nsealed by: %s\nenvelope: %s\n", r.TransactionID, strings.Join(who, ", "), r.EscrowKeyVersion, escapeText(r.SealedBy), r.Envelope)
	})
}

// decryptFlags are decrypt's flags (decryptCmd).
type decryptFlags struct{ envFile, as, purpose, fields, txid *string }

func (c *cli) decrypt(args []string, stdin io.Reader, f decryptFlags) error {
	var body []byte
	var err error
	if *f.as != "" || *f.envFile != "" {
		if *f.as == "" || *f.envFile == "" || *f.purpose == "" {
			return usageError{msg: "decrypt with flags needs --envelope-file, --as and --purpose"}
		}
		env, err := envelopeFromFile(*f.envFile)
		if err != nil {
			return err
		}
		req := api.DecryptRequest{Envelope: env, As: *f.as, Purpose: *f.purpose, TransactionID: *f.txid}
		if *f.fields != "" {
			req.Fields = strings.Split(*f.fields, ",")
		}
		body, _ = json.Marshal(req)
	} else if body, err = readInput(args, stdin); err != nil {
		return err
	}
	return oneOrBatch(c, body, c.d.Decrypt, c.d.DecryptBatch, func(w io.Writer, r *api.Decrypted) {
		fmt.Fprintf(w, "transaction %s (job %s)\n", r.TransactionID, r.JobID)
		printSealedBy(w, r.SealedBy)
		printFields(w, r.Confidential)
	})
}

// printFields prints decrypted fields, one per line, sorted by name.
func printFields(w io.Writer, fields map[string]json.RawMessage) {
	names := make([]string, 0, len(fields))
	for k := range fields {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		fmt.Fprintf(w, "  %s: %s\n", k, fields[k])
	}
}

// envelopeFromFile accepts either the bare envelope text or a JSON object
// with an "envelope" field (encrypt's --json output).
func envelopeFromFile(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return envelopeFromBytes(data), nil
}

// printSealedBy prints who sealed an envelope (v2); a v1 envelope does
// not say.
func printSealedBy(w io.Writer, by string) {
	if by != "" {
		fmt.Fprintf(w, "sealed by %s\n", escapeText(by))
	}
}

// stamp is t as the daemon's JSON has it (RFC 3339), "" for none.
func stamp(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.Format(time.RFC3339Nano)
}
