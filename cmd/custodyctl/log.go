package main

import (
	"encoding/csv"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/mod/sumdb/note"

	"custody/internal/auditlog"
)

// The reviewer's commands work offline on a copy of the log directory with
// only the log's public key: no daemon, no HSM.

const logUsage = `custodyctl log — offline tools for the access log (a copied log directory is enough)

  log verify DIR [--since CHECKPOINT_FILE] [--key PUBKEY_FILE] [--allow-unsigned-tail] [--json]
        Recompute the Merkle tree, check every signed checkpoint, parse every entry
        strictly; with --since, check the log still contains a checkpoint you saved.
        Exit 1 and the index where the log stops being trustworthy on any tampering.
  log prove DIR N [--key PUBKEY_FILE]
        Print an inclusion proof of entry N against the latest signed checkpoint
        (JSON); a third party checks it with: log check-proof FILE --key PUBKEY_FILE
  log check-proof FILE --key PUBKEY_FILE
  log query DIR [--transaction T] [--participant P] [--principal P] [--purpose P]
        [--order ID] [--outcome allowed|denied|failed] [--op OP] [--from T] [--to T]
        [--format table|jsonl|csv]
  log report DIR --from T --to T --out FILE.html
        A self-contained HTML report with charts (no network needed to open it).

--key defaults to DIR/log.pub; keep your own copy of the key: the directory's
copy proves nothing against whoever could rewrite the directory. Times are
RFC 3339 ("2026-11-25T00:00:00Z") or dates ("2026-11-25", UTC).
`

// parseInterleaved parses flags that may come after positional arguments.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

func runLog(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, logUsage)
		return usageError{"log: a subcommand is required"}
	}
	fs := flag.NewFlagSet("log "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, logUsage) }
	switch args[0] {
	case "verify":
		return logVerify(fs, args[1:], stdout)
	case "prove":
		return logProve(fs, args[1:], stdout)
	case "check-proof":
		return logCheckProof(fs, args[1:], stdout)
	case "query":
		return logQuery(fs, args[1:], stdout)
	case "report":
		return logReport(fs, args[1:], stdout)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, logUsage)
		return nil
	}
	return usageError{fmt.Sprintf("log: unknown subcommand %q", args[0])}
}

func loadVerifier(keyFile, dir string) (note.Verifier, error) {
	if keyFile == "" {
		keyFile = filepath.Join(dir, auditlog.PublicKeyFile)
	}
	b, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("public key: %w", err)
	}
	return auditlog.ParseVerifierKey(b)
}

func logVerify(fs *flag.FlagSet, args []string, stdout io.Writer) error {
	since := fs.String("since", "", "a signed checkpoint saved earlier")
	key := fs.String("key", "", "the log's public key (note verifier key); default DIR/log.pub")
	allow := fs.Bool("allow-unsigned-tail", false, "accept entries after the latest checkpoint (a copy of a running log)")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return usageError{err.Error()}
	}
	if len(pos) != 1 {
		return usageError{"usage: custodyctl log verify DIR [--since FILE] [--key FILE]"}
	}
	v, err := loadVerifier(*key, pos[0])
	if err != nil {
		return err
	}
	opts := auditlog.VerifyOptions{Verifier: v, AllowUnsignedTail: *allow}
	if *since != "" {
		if opts.Since, err = os.ReadFile(*since); err != nil {
			return err
		}
	}
	start := time.Now()
	res, err := auditlog.Verify(pos[0], opts)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(res)
	} else {
		fmt.Fprintf(stdout, "entries:      %d\ncheckpoints:  %d (latest signs %d entries)\nroot:         %s\n", res.Entries, res.Checkpoints, res.LatestSize, res.Root)
		for _, p := range res.Problems {
			fmt.Fprintf(stdout, "PROBLEM at entry %d (%s): %s\n", p.Index, p.Kind, p.Detail)
		}
		if res.OK {
			fmt.Fprintf(stdout, "OK: all %d entries are covered by a signed checkpoint and unaltered (%s)\n", res.Entries, time.Since(start).Round(time.Millisecond))
		} else {
			fmt.Fprintf(stdout, "FAILED: the log stops being trustworthy at entry %d (entries 0..%d verified)\n", res.TrustedUpTo, res.TrustedUpTo-1)
		}
	}
	if !res.OK {
		return fmt.Errorf("verification failed at entry %d", res.TrustedUpTo)
	}
	return nil
}

func logProve(fs *flag.FlagSet, args []string, stdout io.Writer) error {
	key := fs.String("key", "", "the log's public key; default DIR/log.pub")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return usageError{err.Error()}
	}
	if len(pos) != 2 {
		return usageError{"usage: custodyctl log prove DIR N"}
	}
	n, err := strconv.ParseInt(pos[1], 10, 64)
	if err != nil || n < 0 {
		return usageError{fmt.Sprintf("entry index %q is not a non-negative integer", pos[1])}
	}
	v, err := loadVerifier(*key, pos[0])
	if err != nil {
		return err
	}
	b, err := auditlog.Prove(pos[0], v, n)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(b)
}

func logCheckProof(fs *flag.FlagSet, args []string, stdout io.Writer) error {
	key := fs.String("key", "", "the log's public key (required)")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return usageError{err.Error()}
	}
	if len(pos) != 1 || *key == "" {
		return usageError{"usage: custodyctl log check-proof FILE --key PUBKEY_FILE"}
	}
	v, err := loadVerifier(*key, "")
	if err != nil {
		return err
	}
	raw, err := os.ReadFile(pos[0])
	if err != nil {
		return err
	}
	var b auditlog.ProofBundle
	if err := json.Unmarshal(raw, &b); err != nil {
		return fmt.Errorf("proof file: %w", err)
	}
	if err := auditlog.CheckBundle(&b, v); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "OK: entry %d is in the log %q of %d entries (signed checkpoint verified)\n", b.Inclusion.Index, v.Name(), b.Inclusion.Size)
	return nil
}

// filter selects entries for query and report.
type filter struct {
	tx, participant, principal, purpose, order, outcome, op string
	from, to                                                time.Time
}

func (f *filter) flags(fs *flag.FlagSet) (from, to *string) {
	fs.StringVar(&f.tx, "transaction", "", "transaction id")
	fs.StringVar(&f.participant, "participant", "", "participant (acting as, registered, or a recipient)")
	fs.StringVar(&f.principal, "principal", "", "principal")
	fs.StringVar(&f.purpose, "purpose", "", "purpose")
	fs.StringVar(&f.order, "order", "", "court order id")
	fs.StringVar(&f.outcome, "outcome", "", "allowed, denied or failed")
	fs.StringVar(&f.op, "op", "", "operation")
	return fs.String("from", "", "from this time (inclusive)"), fs.String("to", "", "until this time (exclusive; a date means the end of that day)")
}

func parseTime(s string, endOfDay bool) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	t, err := time.Parse("2006-01-02", s)
	if err != nil {
		return time.Time{}, usageError{fmt.Sprintf("time %q is neither RFC 3339 nor YYYY-MM-DD", s)}
	}
	if endOfDay {
		t = t.AddDate(0, 0, 1)
	}
	return t, nil
}

func (f *filter) match(e auditlog.Entry) bool {
	if f.participant != "" && e.Participant != f.participant {
		found := false
		for _, p := range e.Participants {
			found = found || p == f.participant
		}
		if !found {
			return false
		}
	}
	return (f.tx == "" || e.TransactionID == f.tx) &&
		(f.principal == "" || e.Principal == f.principal) &&
		(f.purpose == "" || e.Purpose == f.purpose) &&
		(f.order == "" || e.CourtOrder == f.order) &&
		(f.outcome == "" || string(e.Outcome) == f.outcome) &&
		(f.op == "" || e.Operation == f.op) &&
		(f.from.IsZero() || !e.Time.Before(f.from)) &&
		(f.to.IsZero() || e.Time.Before(f.to))
}

func logQuery(fs *flag.FlagSet, args []string, stdout io.Writer) error {
	var f filter
	from, to := f.flags(fs)
	format := fs.String("format", "table", "table, jsonl or csv")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return usageError{err.Error()}
	}
	if len(pos) != 1 {
		return usageError{"usage: custodyctl log query DIR [filters] [--format table|jsonl|csv]"}
	}
	if f.from, err = parseTime(*from, false); err != nil {
		return err
	}
	if f.to, err = parseTime(*to, true); err != nil {
		return err
	}
	cols := []string{"index", "time", "op", "outcome", "code", "principal", "uid", "pid", "transaction", "participant", "purpose", "fields", "key", "court_order", "end_user_ip", "request_id"}
	row := func(i int64, e auditlog.Entry) []string {
		part := e.Participant
		if part == "" {
			part = strings.Join(e.Participants, " ")
		}
		return []string{strconv.FormatInt(i, 10), e.Time.UTC().Format(time.RFC3339Nano), e.Operation, string(e.Outcome), e.Code, e.Principal,
			strconv.FormatUint(uint64(e.Caller.UID), 10), strconv.Itoa(int(e.Caller.PID)), e.TransactionID, part, e.Purpose,
			strings.Join(e.Fields, " "), e.KeyLabel, e.CourtOrder, e.EndUser.IP, e.EndUser.RequestID}
	}
	var emit func(i int64, e auditlog.Entry) error
	var flush func() error
	switch *format {
	case "table":
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, strings.ToUpper(strings.Join(cols, "\t")))
		emit = func(i int64, e auditlog.Entry) error {
			r := row(i, e)
			for k := range r {
				if r[k] == "" {
					r[k] = "-"
				}
			}
			_, err := fmt.Fprintln(tw, strings.Join(r, "\t"))
			return err
		}
		flush = tw.Flush
	case "csv":
		w := csv.NewWriter(stdout)
		w.Write(cols)
		emit = func(i int64, e auditlog.Entry) error { return w.Write(row(i, e)) }
		flush = func() error { w.Flush(); return w.Error() }
	case "jsonl":
		enc := json.NewEncoder(stdout)
		emit = func(i int64, e auditlog.Entry) error {
			return enc.Encode(struct {
				Index int64 `json:"index"`
				auditlog.Entry
			}{i, e})
		}
		flush = func() error { return nil }
	default:
		return usageError{fmt.Sprintf("--format %q: want table, jsonl or csv", *format)}
	}
	err = auditlog.ReadEntries(pos[0], func(i int64, e auditlog.Entry) error {
		if f.match(e) {
			return emit(i, e)
		}
		return nil
	})
	if ferr := flush(); err == nil {
		err = ferr
	}
	if errors.Is(err, auditlog.ErrMalformed) {
		return fmt.Errorf("%w (run custodyctl log verify first)", err)
	}
	return err
}
