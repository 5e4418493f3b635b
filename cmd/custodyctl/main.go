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
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"time"
)

const usage = `custodyctl — client of custodyd, the key custody daemon

Usage:
  custodyctl [--socket PATH] [--json] [--timeout D] COMMAND [ARGS]

Commands:
  health                        Token, capabilities, daemon keys, policy, and who you are.
  participants register ID      Create participant ID's X25519 key pair on the HSM (admin role).
  participants show ID          List ID's key versions and public keys.
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
  rewrap --in FILE --out FILE   Move envelopes (JSON lines) to the active key versions, resumable.

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
  --json          print the daemon's JSON response as it is
  --timeout D     give up after D (default 60s)

Exit status: 0 on success; 1 when the daemon answered an error, printed as
"custodyctl: CODE: message" (e.g. purpose_denied; codes: docs/api.md), or
when a local step failed ("custodyctl: error: …"); 2 on a usage error
("custodyctl: error: …", then "hint: …"). COMMAND --help shows its flags.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// client is one invocation's connection settings.
type client struct {
	socket  string
	json    bool
	timeout time.Duration
	out     io.Writer
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
	c := &client{out: stdout}
	fs.StringVar(&c.socket, "socket", defSocket, "daemon socket")
	fs.BoolVar(&c.json, "json", false, "print raw JSON")
	fs.DurationVar(&c.timeout, "timeout", 60*time.Second, "request timeout")
	var err error
	if err = fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, usage)
			return 0
		}
		return report(stderr, usageError{msg: flagError(err), hint: "see custodyctl --help"})
	}
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
	var ae *apiError
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

// apiError is the daemon's error body.
type apiError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *apiError) Error() string { return e.Code + ": " + e.Message }

// call sends one request and decodes the response into out (when non-nil).
// It returns the raw body too, for --json.
func (c *client) call(method, path string, body []byte, out any) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	hc := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", c.socket)
		},
	}}
	req, err := http.NewRequestWithContext(ctx, method, "http://custody"+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cannot reach custodyd at %s: %w (is it running? see --socket)", c.socket, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error *apiError `json:"error"`
		}
		if json.Unmarshal(raw, &e) == nil && e.Error != nil {
			return raw, e.Error
		}
		return raw, fmt.Errorf("daemon answered %s", resp.Status)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return raw, fmt.Errorf("unexpected response: %w", err)
		}
	}
	return raw, nil
}

func (c *client) printJSON(raw []byte) {
	var buf bytes.Buffer
	if json.Indent(&buf, raw, "", "  ") != nil {
		buf.Reset()
		buf.Write(raw)
	}
	fmt.Fprintln(c.out, strings.TrimSpace(buf.String()))
}

func (c *client) health() error {
	var h struct {
		Status     string `json:"status"`
		Version    string `json:"version"`
		Profile    string `json:"capability_summary"`
		EscrowKey  string `json:"escrow_key"`
		SigningKey string `json:"signing_key"`
		Policy     string `json:"policy"`
		You        string `json:"you"`
		Token      struct {
			Label, Serial, Manufacturer, Model string
			Sessions                           int
			Rebuilds                           uint64
		} `json:"token"`
	}
	raw, err := c.call("GET", "/v1/health", nil, &h)
	if err != nil {
		return err
	}
	if c.json {
		c.printJSON(raw)
		return nil
	}
	fmt.Fprintf(c.out, "status:       %s\n", h.Status)
	fmt.Fprintf(c.out, "daemon:       %s\n", h.Version)
	fmt.Fprintf(c.out, "token:        %q serial %s (%s %s), %d sessions, %d rebuilds\n", h.Token.Label, h.Token.Serial, h.Token.Manufacturer, h.Token.Model, h.Token.Sessions, h.Token.Rebuilds)
	fmt.Fprintf(c.out, "capabilities: %s\n", h.Profile)
	fmt.Fprintf(c.out, "escrow key:   %s\n", h.EscrowKey)
	fmt.Fprintf(c.out, "signing key:  %s\n", h.SigningKey)
	fmt.Fprintf(c.out, "policy:       %s\n", h.Policy)
	fmt.Fprintf(c.out, "you are:      %s\n", h.You)
	if h.Status != "ok" {
		return fmt.Errorf("daemon is not healthy: %s", h.Status)
	}
	return nil
}

type keyVersion struct {
	Version   uint32 `json:"key_version"`
	Algorithm string `json:"algorithm"`
	PublicKey string `json:"public_key"`
	SHA256    string `json:"sha256"`
	Created   string `json:"created"`
}

func (c *client) participants(args []string) error {
	if len(args) != 2 || (args[0] != "register" && args[0] != "show") {
		return usageError{msg: "usage: custodyctl participants register|show ID"}
	}
	id := args[1]
	if args[0] == "register" {
		body, _ := json.Marshal(map[string]string{"id": id})
		var r struct {
			ID string `json:"id"`
			keyVersion
		}
		raw, err := c.call("POST", "/v1/participants", body, &r)
		if err != nil {
			return err
		}
		if c.json {
			c.printJSON(raw)
			return nil
		}
		fmt.Fprintf(c.out, "registered %s: key v%d %s\npublic key: %s\nsha256:     %s\n", r.ID, r.Version, r.Algorithm, r.PublicKey, r.SHA256)
		return nil
	}
	var r struct {
		ID       string       `json:"id"`
		Active   uint32       `json:"active_version"`
		Versions []keyVersion `json:"versions"`
	}
	raw, err := c.call("GET", "/v1/participants/"+id, nil, &r)
	if err != nil {
		return err
	}
	if c.json {
		c.printJSON(raw)
		return nil
	}
	fmt.Fprintf(c.out, "%s (active version %d)\n", r.ID, r.Active)
	for _, v := range r.Versions {
		fmt.Fprintf(c.out, "  v%d  %s  created %s\n      public %s\n      sha256 %s\n", v.Version, v.Algorithm, v.Created, v.PublicKey, v.SHA256)
	}
	return nil
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

func (c *client) encrypt(args []string, stdin io.Reader) error {
	body, err := readInput(args, stdin)
	if err != nil {
		return err
	}
	path := "/v1/transactions/encrypt"
	if isBatch(body) {
		path += "/batch"
		c.json = true // a batch is only useful as JSON
	}
	var r struct {
		TransactionID string `json:"transaction_id"`
		Envelope      string `json:"envelope"`
		Recipients    []struct {
			ID         string `json:"id"`
			KeyVersion uint32 `json:"key_version"`
		} `json:"recipients"`
		EscrowKeyVersion uint32 `json:"escrow_key_version"`
		SealedBy         string `json:"sealed_by"`
	}
	raw, err := c.call("POST", path, body, &r)
	if err != nil || c.json {
		if err == nil {
			c.printJSON(raw)
		}
		return err
	}
	var who []string
	for _, p := range r.Recipients {
		who = append(who, fmt.Sprintf("%s (v%d)", p.ID, p.KeyVersion))
	}
	fmt.Fprintf(c.out, "sealed transaction %s for %s + escrow (v%d)\nsealed by: %s\nenvelope: %s\n", r.TransactionID, strings.Join(who, ", "), r.EscrowKeyVersion, escapeText(r.SealedBy), r.Envelope)
	return nil
}

// decryptFlags are decrypt's flags (decryptCmd).
type decryptFlags struct{ envFile, as, purpose, fields, txid *string }

func (c *client) decrypt(args []string, stdin io.Reader, f decryptFlags) error {
	envFile, as, purpose, fields, txid := f.envFile, f.as, f.purpose, f.fields, f.txid
	var body []byte
	var err error
	if *as != "" || *envFile != "" {
		if *as == "" || *envFile == "" || *purpose == "" {
			return usageError{msg: "decrypt with flags needs --envelope-file, --as and --purpose"}
		}
		env, err := envelopeFromFile(*envFile)
		if err != nil {
			return err
		}
		req := map[string]any{"envelope": env, "as": *as, "purpose": *purpose}
		if *fields != "" {
			req["fields"] = strings.Split(*fields, ",")
		}
		if *txid != "" {
			req["transaction_id"] = *txid
		}
		body, _ = json.Marshal(req)
	} else if body, err = readInput(args, stdin); err != nil {
		return err
	}
	path := "/v1/transactions/decrypt"
	if isBatch(body) {
		path += "/batch"
		c.json = true
	}
	var r struct {
		TransactionID string                     `json:"transaction_id"`
		JobID         string                     `json:"job_id"`
		Confidential  map[string]json.RawMessage `json:"confidential"`
		SealedBy      string                     `json:"sealed_by"`
	}
	raw, err := c.call("POST", path, body, &r)
	if err != nil || c.json {
		if err == nil {
			c.printJSON(raw)
		}
		return err
	}
	fmt.Fprintf(c.out, "transaction %s (job %s)\n", r.TransactionID, r.JobID)
	if r.SealedBy != "" {
		fmt.Fprintf(c.out, "sealed by %s\n", escapeText(r.SealedBy))
	}
	c.printFields(r.Confidential)
	return nil
}

// printFields prints decrypted fields, one per line, sorted by name.
func (c *client) printFields(fields map[string]json.RawMessage) {
	names := make([]string, 0, len(fields))
	for k := range fields {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		fmt.Fprintf(c.out, "  %s: %s\n", k, fields[k])
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
