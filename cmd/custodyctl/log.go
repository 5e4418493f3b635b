package main

import (
	"bytes"
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

// logGroup is custodyctl log: the reviewer's offline commands.
func logGroup(stdout io.Writer) *group {
	with := func(f func(*flag.FlagSet, io.Writer) func([]string) error) func(*flag.FlagSet) func([]string) error {
		return func(fs *flag.FlagSet) func([]string) error { return f(fs, stdout) }
	}
	return &group{name: "log",
		summary: "Offline tools for the access log (a copied log directory is enough).",
		details: `The key is never the directory's own log.pub: whoever could rewrite the directory
could replace it too. verify, prove, check-proof and report use --key FILE (your own
copy) or the key you pinned for the log; with neither they exit 1 and show the
directory key's fingerprint to compare and pin. Every string from an entry is
printed escaped (control and bidi characters as \x1b, \n, \u202e, …; a backslash
as \\), and CSV cells that would start a formula get a leading '. Times are
RFC 3339 ("2026-11-25T00:00:00Z") or dates ("2026-11-25", UTC).`,
		subs: []*command{{name: "log pin", args: "(DIR | KEYFILE)", minArgs: 1, maxArgs: 1,
			summary: "Pin the log's key in your reviewer configuration.",
			details: `The configuration is $XDG_CONFIG_HOME/custody/reviewer.json (default
~/.config/custody/reviewer.json). The key is pinned after checking it has the
fingerprint the operators published (genesis prints the custody/log/v1 key's
sha256 and words). Without --fingerprint it shows the key's fingerprint.`,
			setup: with(logPin),
		}, {name: "log verify", args: "DIR...", minArgs: 0, maxArgs: 64,
			summary: "Verify the log: Merkle tree, signed checkpoints, every entry.",
			details: `Recompute the Merkle tree, check every signed checkpoint, parse every entry
strictly; with --since, check the log still contains a checkpoint you saved.
Exit 1 and the index where the log stops being trustworthy on any tampering.
Several DIRs (a fleet's logs, docs/fleet.md): each is verified with the key
pinned for its own log name (--key and --since take one DIR only); --json
prints a list; exit 1 if any fails. --fleet FILE adds the logs a fleet
manifest lists (scripts/fleet.sh writes DIR/fleet.json), each with the key
the manifest gives (trusted as --key is: keep your own copy) or, without
one, its pinned key.`,
			setup: with(logVerify),
		}, {name: "log prove", args: "DIR N", minArgs: 2, maxArgs: 2,
			summary: "Print an inclusion proof of entry N (JSON).",
			details: `The proof is against the latest signed checkpoint; a third party checks it with:
custodyctl log check-proof FILE --key PUBKEY_FILE`,
			setup: with(logProve),
		}, {name: "log check-proof", args: "FILE", minArgs: 1, maxArgs: 1,
			summary: "Check an inclusion proof made by log prove.",
			setup:   with(logCheckProof),
		}, {name: "log query", args: "DIR...", minArgs: 0, maxArgs: 64,
			summary: "Print the entries that match the filters.",
			details: `One DIR: unverified, run custodyctl log verify first.
Several DIRs or --fleet FILE (a fleet's logs, docs/fleet.md; the keys as for
log verify): every log is verified first and no entry is printed unless all
verify; the matching entries of all logs are printed in time order, each
with the name of its log (column LOG, or "log" in jsonl) and its index
there. E.g. who opened transaction X on any host, under which order:
  custodyctl log query --fleet fleet.json --transaction X --outcome allowed`,
			setup: with(logQuery),
		}, {name: "log report", args: "DIR...", minArgs: 0, maxArgs: 64,
			summary: "Write a self-contained HTML report with charts.",
			details: `--from, --to and --out are required. No network is needed to open the report;
it says whether the log verifies, so it needs the key like verify does.
Several DIRs or --fleet FILE (keys as for log verify): one report over the
fleet's logs counted together, with each log's verification and count.`,
			setup: with(logReport),
		}}}
}

// writeJSON writes v as JSON (indented) with escapeJSON applied.
func writeJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = w.Write(append(escapeJSON(b), '\n'))
	return err
}

func logVerify(fs *flag.FlagSet, stdout io.Writer) func(pos []string) error {
	since := fs.String("since", "", "`file` with a signed checkpoint you saved earlier")
	key := fs.String("key", "", "`file` with your own copy of the log's public key (note verifier key); default: the key you pinned")
	allow := fs.Bool("allow-unsigned-tail", false, "accept entries after the latest checkpoint (a copy of a running log)")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	manifest := fs.String("fleet", "", "fleet manifest `file` listing log directories and their keys (docs/fleet.md)")
	return func(pos []string) error {
		if len(pos) == 1 && *manifest == "" {
			return verifyOne(stdout, pos[0], *key, *since, *allow, *asJSON)
		}
		if len(pos) == 0 && *manifest == "" {
			return usageError{msg: "log verify: missing argument: want DIR...", hint: "see custodyctl log verify --help"}
		}
		if *key != "" || *since != "" {
			return usageError{msg: "log verify: --key and --since take one DIR; pin each log's key (custodyctl log pin) to verify several"}
		}
		srcs, err := logSources("log verify", pos, *manifest)
		if err != nil {
			return err
		}
		var failed []string
		var results []json.RawMessage
		for _, src := range srcs {
			dir := src.dir
			var buf bytes.Buffer
			if !*asJSON {
				fmt.Fprintf(stdout, "== %s\n", escapeText(dir))
			}
			w := io.Writer(stdout)
			if *asJSON {
				w = &buf
			}
			if err := verifyWith(w, dir, src.key, "", *allow, *asJSON); err != nil {
				failed = append(failed, dir)
				if !*asJSON {
					fmt.Fprintf(stdout, "error: %s\n", escapeText(err.Error()))
				}
				if buf.Len() == 0 {
					b, _ := json.Marshal(map[string]string{"dir": dir, "error": err.Error()})
					buf.Write(escapeJSON(b))
				}
			}
			if *asJSON {
				results = append(results, json.RawMessage(bytes.TrimSpace(buf.Bytes())))
			}
		}
		if *asJSON {
			if err := writeJSON(stdout, results); err != nil {
				return err
			}
		}
		if len(failed) > 0 {
			return fmt.Errorf("%d of %d logs failed: %s", len(failed), len(srcs), joinEscaped(failed))
		}
		if !*asJSON {
			fmt.Fprintf(stdout, "OK: all %d logs verify\n", len(srcs))
		}
		return nil
	}

}

// verifyOne is log verify of one directory.
func verifyOne(stdout io.Writer, dir, key, since string, allow, asJSON bool) error {
	v, err := reviewerKey("log verify", key, dir)
	if err != nil {
		return err
	}
	return verifyWith(stdout, dir, v, since, allow, asJSON)
}

// verifyWith is log verify of dir with key v.
func verifyWith(stdout io.Writer, dir string, v *reviewerVerifier, since string, allow, asJSON bool) error {
	var err error
	opts := auditlog.VerifyOptions{Verifier: v, AllowUnsignedTail: allow}
	if since != "" {
		if opts.Since, err = os.ReadFile(since); err != nil {
			return err
		}
	}
	start := time.Now()
	res, err := auditlog.Verify(dir, opts)
	if err != nil {
		return err
	}
	if dk := dirKeyMismatch(dir, v); dk != "" {
		// The daemon never writes another key than its signer's (Open
		// checks it): the directory was altered.
		res.OK = false
		res.Problems = append(res.Problems, auditlog.Problem{Index: res.TrustedUpTo, Kind: "key_replaced", Detail: dk})
	}
	if asJSON {
		if err := writeJSON(stdout, res); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(stdout, "key:          %s (%s)\n", escapeText(v.Name()), escapeText(v.source))
		fmt.Fprintf(stdout, "entries:      %d\ncheckpoints:  %d (latest signs %d entries)\nroot:         %s\n", res.Entries, res.Checkpoints, res.LatestSize, res.Root)
		for _, p := range res.Problems {
			fmt.Fprintf(stdout, "PROBLEM at entry %d (%s): %s\n", p.Index, p.Kind, escapeText(p.Detail))
		}
		switch {
		case res.OK:
			fmt.Fprintf(stdout, "OK: all %d entries are covered by a signed checkpoint and unaltered (%s)\n", res.Entries, time.Since(start).Round(time.Millisecond))
		case res.TrustedUpTo == res.Entries:
			fmt.Fprintf(stdout, "FAILED: the directory was altered (entries 0..%d verified)\n", res.TrustedUpTo-1)
		default:
			fmt.Fprintf(stdout, "FAILED: the log stops being trustworthy at entry %d (entries 0..%d verified)\n", res.TrustedUpTo, res.TrustedUpTo-1)
		}
	}
	if !res.OK {
		return fmt.Errorf("verification failed at entry %d", res.TrustedUpTo)
	}
	return nil
}

// dirKeyMismatch describes how dir's log.pub differs from the key v the
// log was verified with, or is "" when it is the same key or absent.
func dirKeyMismatch(dir string, v *reviewerVerifier) string {
	b, err := os.ReadFile(filepath.Join(dir, auditlog.PublicKeyFile))
	if err != nil || strings.TrimSpace(string(b)) == v.text {
		return ""
	}
	fp, _, ferr := keyFingerprint(string(b))
	if ferr != nil {
		fp = "not a valid key"
	}
	return fmt.Sprintf("%s is not the key the log was verified with (its sha256: %s): the directory's key was replaced", auditlog.PublicKeyFile, fp)
}

func logProve(fs *flag.FlagSet, stdout io.Writer) func(pos []string) error {
	key := fs.String("key", "", "`file` with your own copy of the log's public key; default: the key you pinned")
	return func(pos []string) error {
		n, err := strconv.ParseInt(pos[1], 10, 64)
		if err != nil || n < 0 {
			return usageError{msg: fmt.Sprintf("entry index %q is not a non-negative integer", pos[1])}
		}
		v, err := reviewerKey("log prove", *key, pos[0])
		if err != nil {
			return err
		}
		b, err := auditlog.Prove(pos[0], v, n)
		if err != nil {
			return err
		}
		return writeJSON(stdout, b)
	}

}

func logCheckProof(fs *flag.FlagSet, stdout io.Writer) func(pos []string) error {
	key := fs.String("key", "", "`file` with the log's public key; default: the key you pinned for the proof's log")
	return func(pos []string) error {
		raw, err := os.ReadFile(pos[0])
		if err != nil {
			return err
		}
		var b auditlog.ProofBundle
		if err := json.Unmarshal(raw, &b); err != nil {
			return fmt.Errorf("proof file: %w", err)
		}
		v, err := proofKey(*key, b.Checkpoint)
		if err != nil {
			return err
		}
		if err := auditlog.CheckBundle(&b, v); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "OK: entry %d is in the log %q of %d entries (signed checkpoint verified)\n", b.Inclusion.Index, escapeText(v.Name()), b.Inclusion.Size)
		return nil
	}

}

// proofKey is the key to check a proof bundle with: --key, else the key
// pinned for the origin its checkpoint names.
func proofKey(keyFile, checkpoint string) (note.Verifier, error) {
	if keyFile != "" {
		b, err := os.ReadFile(keyFile)
		if err != nil {
			return nil, fmt.Errorf("public key: %w", err)
		}
		return auditlog.ParseVerifierKey(b)
	}
	path, pinned, _, err := loadReviewerConfig()
	if err != nil {
		return nil, err
	}
	origin, _, _ := strings.Cut(checkpoint, "\n")
	if v, ok := pinned[origin]; ok {
		return v, nil
	}
	return nil, fmt.Errorf("log check-proof: %w for the log %q in %s: pin it (custodyctl log pin KEYFILE --fingerprint SHA256) or pass --key FILE", errNotPinned, escapeText(origin), path)
}

// joinEscaped joins escaped strings with spaces.
func joinEscaped(list []string) string {
	out := make([]string, len(list))
	for i, s := range list {
		out[i] = escapeText(s)
	}
	return strings.Join(out, " ")
}

// filter selects entries for query and report.
type filter struct {
	tx, participant, principal, purpose, order, outcome, op string
	from, to                                                time.Time
}

func (f *filter) flags(fs *flag.FlagSet) (from, to *string) {
	fs.StringVar(&f.tx, "transaction", "", "transaction `id`")
	fs.StringVar(&f.participant, "participant", "", "participant `id` (acting as, registered, or a recipient)")
	fs.StringVar(&f.principal, "principal", "", "`principal`")
	fs.StringVar(&f.purpose, "purpose", "", "`purpose`")
	fs.StringVar(&f.order, "order", "", "court order `id`")
	fs.StringVar(&f.outcome, "outcome", "", "`outcome`: allowed, denied or failed")
	fs.StringVar(&f.op, "op", "", "operation `op`")
	return fs.String("from", "", "from this `time` (inclusive)"), fs.String("to", "", "until this `time` (exclusive; a date means the end of that day)")
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
		return time.Time{}, usageError{msg: fmt.Sprintf("time %q is neither RFC 3339 nor YYYY-MM-DD", s)}
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

func logQuery(fs *flag.FlagSet, stdout io.Writer) func(pos []string) error {
	var f filter
	from, to := f.flags(fs)
	format := fs.String("format", "table", "output `format`: table, jsonl or csv")
	manifest := fs.String("fleet", "", "fleet manifest `file` listing log directories and their keys (several logs: docs/fleet.md)")
	allow := fs.Bool("allow-unsigned-tail", false, "several logs: accept entries after the latest checkpoint (copies of running logs)")
	return func(pos []string) error {
		var err error
		if f.from, err = parseTime(*from, false); err != nil {
			return err
		}
		if f.to, err = parseTime(*to, true); err != nil {
			return err
		}
		fleet := len(pos) > 1 || *manifest != ""
		if len(pos) == 0 && !fleet {
			return usageError{msg: "log query: missing argument: want DIR...", hint: "see custodyctl log query --help"}
		}
		cols := []string{"index", "time", "op", "outcome", "code", "principal", "uid", "pid", "transaction", "participant", "purpose", "fields", "key", "court_order", "end_user_ip", "request_id", "clipped"}
		if fleet {
			cols = append([]string{"log"}, cols...)
		}
		// row is one entry's cells, every string escaped (escapeText); log
		// is the entry's log name in a fleet query.
		row := func(log string, i int64, e auditlog.Entry) []string {
			part := e.Participant
			if part == "" {
				part = joinEscaped(e.Participants)
			} else {
				part = escapeText(part)
			}
			r := []string{strconv.FormatInt(i, 10), e.Time.UTC().Format(time.RFC3339Nano), escapeText(e.Operation), escapeText(string(e.Outcome)), escapeText(e.Code), escapeText(e.Principal),
				strconv.FormatUint(uint64(e.Caller.UID), 10), strconv.Itoa(int(e.Caller.PID)), escapeText(e.TransactionID), part, escapeText(e.Purpose),
				joinEscaped(e.Fields), escapeText(e.KeyLabel), escapeText(e.CourtOrder), escapeText(e.EndUser.IP), escapeText(e.EndUser.RequestID), joinEscaped(e.Clipped)}
			if fleet {
				r = append([]string{escapeText(log)}, r...)
			}
			return r
		}
		var emit func(log string, i int64, e auditlog.Entry) error
		var flush func() error
		switch *format {
		case "table":
			tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, strings.ToUpper(strings.Join(cols, "\t")))
			emit = func(log string, i int64, e auditlog.Entry) error {
				r := row(log, i, e)
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
			emit = func(log string, i int64, e auditlog.Entry) error {
				r := row(log, i, e)
				for k := range r {
					r[k] = csvCell(r[k])
				}
				return w.Write(r)
			}
			flush = func() error { w.Flush(); return w.Error() }
		case "jsonl":
			emit = func(log string, i int64, e auditlog.Entry) error {
				var b []byte
				var err error
				if fleet {
					b, err = json.Marshal(struct {
						Log   string `json:"log"`
						Index int64  `json:"index"`
						auditlog.Entry
					}{log, i, e})
				} else {
					b, err = json.Marshal(struct {
						Index int64 `json:"index"`
						auditlog.Entry
					}{i, e})
				}
				if err != nil {
					return err
				}
				_, err = stdout.Write(append(escapeJSON(b), '\n'))
				return err
			}
			flush = func() error { return nil }
		default:
			return usageError{msg: fmt.Sprintf("--format %q: want table, jsonl or csv", *format)}
		}
		if fleet {
			srcs, err := logSources("log query", pos, *manifest)
			if err != nil {
				return err
			}
			// Verified and collected before anything is printed.
			es, err := queryFleet(srcs, *allow, f.match)
			if err != nil {
				return err
			}
			for _, fe := range es {
				if err := emit(fe.log, fe.index, fe.e); err != nil {
					return err
				}
			}
			return flush()
		}
		err = auditlog.ReadEntries(pos[0], func(i int64, e auditlog.Entry) error {
			if f.match(e) {
				return emit("", i, e)
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

}
