package main

// custodyctl store: confidential transactions in PostgreSQL (internal/store,
// docs/store.md), and custodyctl rewrap --postgres: rotation's rewrap done
// in place.

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"time"

	"custody/internal/api"
	"custody/internal/store"
)

// The text form of an envelope is its binary form in unpadded base64url
// (docs/envelope.md); the database keeps the binary form.
func envelopeText(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func envelopeBinary(s string) ([]byte, error) { return base64.RawURLEncoding.Strict().DecodeString(s) }

// dsnFlag declares --postgres, defaulting to $CUSTODY_POSTGRES.
func dsnFlag(fs *flag.FlagSet) *string {
	return fs.String("postgres", os.Getenv("CUSTODY_POSTGRES"), "PostgreSQL `DSN` without a password, e.g. \"host=/run/postgresql dbname=app\" (default $CUSTODY_POSTGRES; the password goes in PGPASSFILE or ~/.pgpass)")
}

// openStore opens the store named by dsn, or says how to name one.
func openStore(ctx context.Context, dsn string) (*store.Store, error) {
	if dsn == "" {
		return nil, usageError{msg: "no database: give --postgres DSN or set CUSTODY_POSTGRES", hint: "docs/store.md"}
	}
	s, err := store.Open(ctx, dsn)
	if errors.Is(err, store.ErrPasswordInDSN) {
		return nil, usageError{msg: err.Error(), hint: "a password in the command line is visible to every local user; see docs/store.md"}
	}
	return s, err
}

// withStore opens the store named by dsn, runs f within --timeout, and
// closes the store.
func (c *cli) withStore(dsn string, f func(context.Context, *store.Store) error) error {
	ctx, cancel := c.ctx()
	defer cancel()
	s, err := openStore(ctx, dsn)
	if err != nil {
		return err
	}
	defer s.Close()
	return f(ctx, s)
}

// storeGroup is custodyctl store.
func (c *cli) storeGroup(stdin io.Reader) *group {
	return &group{name: "store",
		summary: "Confidential transactions in PostgreSQL: seal and store, open, find, rewrap status (docs/store.md).",
		subs: []*command{{name: "store init", maxArgs: 0,
			summary: "Create the reference schema's tables and indexes where missing.",
			setup: func(fs *flag.FlagSet) func([]string) error {
				dsn := dsnFlag(fs)
				return func([]string) error { return c.storeInit(*dsn) }
			},
		}, {name: "store put", args: "[FILE|-]", maxArgs: 1,
			summary: "Seal a transaction through the daemon and insert it, in one step.",
			details: `FILE (or stdin) holds encrypt's request (custodyctl encrypt --help); its
transaction_id, job_id and public_data become the row's columns, --status its
status. Nothing is inserted when the daemon refuses; a transaction id already in
the table is refused (the envelope the daemon sealed is then not stored).`,
			setup: func(fs *flag.FlagSet) func([]string) error {
				dsn := dsnFlag(fs)
				status := fs.String("status", "", "the row's `status` column")
				return func(pos []string) error { return c.storePut(*dsn, *status, pos, stdin) }
			},
		}, {name: "store get", args: "TRANSACTION", minArgs: 1, maxArgs: 1,
			summary: "Open a stored transaction as a participant, for a purpose.",
			details: `Prints the row's public columns and the fields the purpose may see
(the daemon checks the policy and that the envelope is that transaction's).`,
			setup: func(fs *flag.FlagSet) func([]string) error {
				dsn := dsnFlag(fs)
				as := fs.String("as", "", "participant `id` to act as (required)")
				purpose := fs.String("purpose", "", "a `purpose` the policy names (required)")
				return func(pos []string) error { return c.storeGet(*dsn, pos[0], *as, *purpose) }
			},
		}, {name: "store find", maxArgs: 0,
			summary: "List transactions by their public columns (nothing is decrypted).",
			setup: func(fs *flag.FlagSet) func([]string) error {
				dsn := dsnFlag(fs)
				job := fs.String("job", "", "job `id`")
				status := fs.String("status", "", "`status`")
				limit := fs.Int("limit", 100, "at most `N` rows")
				return func([]string) error {
					return c.storeFind(*dsn, store.Filter{JobID: *job, Status: *status, Limit: *limit})
				}
			},
		}, {name: "store status", maxArgs: 0,
			summary: "Rows per key version, per participant and for escrow, and what needs a rewrap.",
			details: `The rewrap backlog compares each row's stanzas with the daemon's active
versions (custodyctl keys list; role admin). Nothing is decrypted.`,
			setup: func(fs *flag.FlagSet) func([]string) error {
				dsn := dsnFlag(fs)
				return func([]string) error { return c.storeStatus(*dsn) }
			},
		}}}
}

func (c *cli) storeInit(dsn string) error {
	return c.withStore(dsn, func(ctx context.Context, s *store.Store) error {
		if err := s.Init(ctx); err != nil {
			return err
		}
		fmt.Fprintln(c.out, "schema ready: tables confidential_transactions and confidential_transaction_stanzas")
		return nil
	})
}

func (c *cli) storePut(dsn, status string, args []string, stdin io.Reader) error {
	body, err := readInput(args, stdin)
	if err != nil {
		return err
	}
	var in api.EncryptRequest
	if err := strictJSON(body, &in); err != nil {
		return err
	}
	return c.withStore(dsn, func(ctx context.Context, s *store.Store) error {
		r, err := c.d.Encrypt(ctx, in)
		if err != nil {
			return err
		}
		env, err := envelopeBinary(r.Envelope)
		if err != nil {
			return fmt.Errorf("the daemon's envelope: %w", err)
		}
		if err := s.Put(ctx, store.Row{TransactionID: in.TransactionID, JobID: in.JobID, Status: status, PublicData: in.PublicData, Envelope: env}); err != nil {
			return err
		}
		return c.answer(r, func(w io.Writer) {
			fmt.Fprintf(w, "stored transaction %s (%d-byte envelope; %d participants + escrow v%d)\n", r.TransactionID, len(env), len(r.Recipients), r.EscrowKeyVersion)
		})
	})
}

func (c *cli) storeGet(dsn, txid, as, purpose string) error {
	if as == "" || purpose == "" {
		return usageError{msg: "store get needs --as and --purpose", hint: "see custodyctl store get --help"}
	}
	return c.withStore(dsn, func(ctx context.Context, s *store.Store) error {
		row, err := s.Get(ctx, txid)
		if err != nil {
			return err
		}
		r, err := c.d.Decrypt(ctx, api.DecryptRequest{Envelope: envelopeText(row.Envelope), As: as, Purpose: purpose, TransactionID: txid})
		if err != nil {
			return err
		}
		return c.answer(r, func(w io.Writer) {
			fmt.Fprintf(w, "transaction %s (job %s), status %q, stored %s\n  public: %s\n", row.TransactionID, row.JobID, row.Status, row.CreatedAt.UTC().Format(time.RFC3339), row.PublicData)
			printSealedBy(w, r.SealedBy)
			printFields(w, r.Confidential)
		})
	})
}

func (c *cli) storeFind(dsn string, f store.Filter) error {
	return c.withStore(dsn, func(ctx context.Context, s *store.Store) error {
		rows, err := s.Find(ctx, f)
		if err != nil {
			return err
		}
		type found struct {
			TransactionID string          `json:"transaction_id"`
			JobID         string          `json:"job_id"`
			Status        string          `json:"status"`
			PublicData    json.RawMessage `json:"public_data"`
			CreatedAt     time.Time       `json:"created_at"`
		}
		out := make([]found, len(rows))
		for i, r := range rows {
			out[i] = found{r.TransactionID, r.JobID, r.Status, r.PublicData, r.CreatedAt}
		}
		return c.answer(out, func(w io.Writer) {
			for _, r := range out {
				fmt.Fprintf(w, "%s  job %s  status %q  %s  %s\n", r.TransactionID, r.JobID, r.Status, r.CreatedAt.UTC().Format(time.RFC3339), r.PublicData)
			}
			fmt.Fprintf(w, "%d rows\n", len(out))
		})
	})
}

// activeVersions asks the daemon which key versions are active.
func (c *cli) activeVersions(ctx context.Context) (store.Active, error) {
	ks, err := c.d.Keys(ctx)
	if err != nil {
		return store.Active{}, err
	}
	a := store.Active{Participants: map[string]uint32{}}
	for _, k := range ks.Keys {
		if k.Kind == "escrow" {
			a.Escrow = k.Active
		} else {
			a.Participants[k.ID] = k.Active
		}
	}
	return a, nil
}

func (c *cli) storeStatus(dsn string) error {
	return c.withStore(dsn, func(ctx context.Context, s *store.Store) error {
		counts, err := s.Counts(ctx)
		if err != nil {
			return err
		}
		a, aerr := c.activeVersions(ctx)
		var backlog int64 = -1
		if aerr == nil {
			if backlog, err = s.Backlog(ctx, a); err != nil {
				return err
			}
		}
		type line struct {
			Participant string `json:"participant,omitempty"`
			Escrow      bool   `json:"escrow,omitempty"`
			KeyVersion  uint32 `json:"key_version"`
			Rows        int64  `json:"rows"`
			Active      bool   `json:"active"`
		}
		var lines []line
		for _, n := range counts {
			l := line{Participant: n.Participant, Escrow: n.Escrow, KeyVersion: n.KeyVersion, Rows: n.Rows}
			if aerr == nil {
				if n.Escrow {
					l.Active = n.KeyVersion == a.Escrow
				} else {
					l.Active = n.KeyVersion == a.Participants[n.Participant]
				}
			}
			lines = append(lines, l)
		}
		out := struct {
			Versions []line `json:"versions"`
			Backlog  *int64 `json:"rows_needing_rewrap,omitempty"`
		}{Versions: lines}
		if backlog >= 0 {
			out.Backlog = &backlog
		}
		return c.answer(out, func(w io.Writer) {
			for _, l := range lines {
				who, state := l.Participant, ""
				if l.Escrow {
					who = "(escrow)"
				}
				if aerr == nil && !l.Active {
					state = "  older than active: needs rewrap"
				}
				fmt.Fprintf(w, "%-24s v%-4d %8d rows%s\n", who, l.KeyVersion, l.Rows, state)
			}
			if aerr != nil {
				fmt.Fprintf(w, "rewrap backlog unknown: the daemon's active versions: %v\n", aerr)
				return
			}
			fmt.Fprintf(w, "rows needing rewrap: %d\n", backlog)
		})
	})
}

// rewrapOpts are rewrap --postgres's settings.
type rewrapOpts struct {
	batch        int     // rows per daemon call and per SQL transaction, at most
	rate         float64 // rows per second at most; 0: no limit
	liveSlowdown float64 // pace by the daemon's live p99 against this multiple of its idle p99; 0: off
}

// rewrapStore rewraps every row due in place: a keyset page of rows at a
// time, rewrapped by the daemon (its device-side rewrap), written back in
// one SQL transaction, each row only at the row_version it was read at. A
// row the application changed meanwhile is read again and retried; a row
// the daemon refuses (tampered, key destroyed) is reported and skipped.
// The database is the resume state: a run stopped anywhere (kill -9
// included) leaves every row either rewrapped and committed or as it was,
// and the next run continues with what is still due.
func (c *cli) rewrapStore(dsn string, o rewrapOpts, stderr io.Writer) error {
	if o.batch < 1 || o.batch > 1000 {
		return usageError{msg: "--batch must be 1 to 1000", hint: "see custodyctl rewrap --help"}
	}
	finite := !math.IsNaN(o.rate) && !math.IsInf(o.rate, 0) && !math.IsNaN(o.liveSlowdown) && !math.IsInf(o.liveSlowdown, 0)
	if !finite || o.rate != 0 && o.rate < 0.1 || o.liveSlowdown < 0 || o.liveSlowdown > 0 && o.liveSlowdown < 1 {
		return usageError{msg: "--rate must be 0 (no limit) or at least 0.1, --live-slowdown 0 (off) or at least 1", hint: "see custodyctl rewrap --help"}
	}
	ctx := context.Background()
	cctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	s, err := openStore(cctx, dsn)
	if err != nil {
		return err
	}
	defer s.Close()
	active, err := c.activeVersions(cctx)
	if err != nil {
		return err
	}
	total, err := s.Backlog(cctx, active)
	if err != nil {
		return err
	}
	return c.rewrapRows(ctx, s, active, total, o, stderr)
}

// failedRow is a row the daemon would not rewrap.
type failedRow struct{ id, code, message string }

// page is one keyset page of due rows and the daemon's answers for them.
type page struct {
	rows []store.Row
	res  []api.BatchResult[api.Rewrapped]
	err  error
}

func rewrapItems(rows []store.Row) []api.RewrapItem {
	items := make([]api.RewrapItem, len(rows))
	for i, r := range rows {
		items[i] = api.RewrapItem{Envelope: envelopeText(r.Envelope), Ref: r.TransactionID}
	}
	return items
}

// pages reads due rows a page at a time and has the daemon rewrap each,
// one page ahead of the writer: page k+1 is on the device while page k is
// written. The pacer sets each page's size and when it is sent, and hears
// the daemon's report of its live requests. It stops at the first error
// (sent as the last page) or when ctx ends.
func (c *cli) pages(ctx context.Context, s *store.Store, active store.Active, pc *pacer) <-chan page {
	out := make(chan page, 1)
	go func() {
		defer close(out)
		after := ""
		for {
			size := pc.page()
			if pc.wait(ctx, size) != nil {
				return
			}
			cctx, cancel := context.WithTimeout(ctx, c.timeout)
			rows, err := s.Due(cctx, active, after, size)
			var res []api.BatchResult[api.Rewrapped]
			if err != nil {
				err = fmt.Errorf("reading rows to rewrap: %w", err)
			} else if len(rows) > 0 {
				after = rows[len(rows)-1].TransactionID
				var live *api.LiveLatency
				if res, live, err = c.d.Rewrap(cctx, rewrapItems(rows)); err != nil {
					err = fmt.Errorf("rows after %q: %w", rows[0].TransactionID, err)
				} else {
					pc.observe(live)
				}
			}
			cancel()
			if err == nil && len(rows) == 0 {
				return
			}
			select {
			case out <- page{rows, res, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	return out
}

func (c *cli) rewrapRows(ctx context.Context, s *store.Store, active store.Active, total int64, o rewrapOpts, stderr io.Writer) error {
	errf, _ := stderr.(*os.File)
	pb := &progress{w: stderr, on: errf != nil && isTerminal(errf), total: total, start: time.Now()}
	jp := jsonProgress{w: stderr, on: !pb.on, start: time.Now()}
	var done, rewrapped, retried int64
	var failed []failedRow
	resumeHint := "rows done so far are committed; run the same command again to continue"
	pctx, stop := context.WithCancel(ctx)
	defer stop()
	pc := newPacer(o.rate, o.liveSlowdown, o.batch)
	for p := range c.pages(pctx, s, active, pc) {
		if p.err != nil {
			return fmt.Errorf("%w (%s)", p.err, resumeHint)
		}
		cctx, cancel := context.WithTimeout(ctx, c.timeout)
		n, r, f, err := c.writePage(cctx, s, pc, p.rows, p.res)
		cancel()
		if err != nil {
			return fmt.Errorf("rows after %q: %w (%s)", p.rows[0].TransactionID, err, resumeHint)
		}
		done += int64(len(p.rows))
		rewrapped += n
		retried += r
		failed = append(failed, f...)
		pb.update(done, false)
		jp.update(done, rewrapped, int64(len(failed)), total, pc.Rate())
	}
	pb.update(done, true)
	jp.update(done, rewrapped, int64(len(failed)), total, pc.Rate())
	cctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	left, err := s.Backlog(cctx, active)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.out, "rewrap --postgres: %d rows rewrapped in place (%d retried after a concurrent update), %d failed; %d rows still need a rewrap\n", rewrapped, retried, len(failed), left)
	sort.Slice(failed, func(i, j int) bool { return failed[i].id < failed[j].id })
	for i, f := range failed {
		if i == 20 {
			fmt.Fprintf(c.out, "  … and %d more\n", len(failed)-20)
			break
		}
		fmt.Fprintf(c.out, "  %s: %s: %s\n", f.id, f.code, f.message)
	}
	if left > 0 {
		return fmt.Errorf("%d rows still need their old key versions: do not retire those versions (custodyctl store status; keys retire --store checks)", left)
	}
	fmt.Fprintln(c.out, "every row is on the active versions; custodyctl keys retire ID VERSION --store checks the table before it destroys a version")
	return nil
}

// maxRetries bounds how often one row changed by the application is read
// again and retried within a run.
const maxRetries = 5

// writePage writes a page's rewrapped envelopes back and retries the rows
// the application changed meanwhile (read again, rewrapped again); it
// returns how many rows were rewrapped, how many of those needed a retry,
// and the failures. An error is the database's or the daemon's as a
// whole: nothing of the failed SQL transaction was written.
func (c *cli) writePage(ctx context.Context, s *store.Store, pc *pacer, rows []store.Row, res []api.BatchResult[api.Rewrapped]) (n, retried int64, failed []failedRow, err error) {
	for attempt := 0; ; attempt++ {
		var repl []store.Replacement
		for i, x := range res {
			switch {
			case x.Error != nil:
				failed = append(failed, failedRow{rows[i].TransactionID, x.Error.Code, x.Error.Message})
			case x.Result.Changed:
				env, err := envelopeBinary(x.Result.Envelope)
				if err != nil {
					return n, retried, failed, fmt.Errorf("the daemon's envelope for %s: %w", rows[i].TransactionID, err)
				}
				repl = append(repl, store.Replacement{TransactionID: rows[i].TransactionID, RowVersion: rows[i].RowVersion, Envelope: env})
			}
		}
		conflicts, err := s.Replace(ctx, repl)
		if err != nil {
			return n, retried, failed, err
		}
		n += int64(len(repl) - len(conflicts))
		if attempt > 0 {
			retried += int64(len(repl) - len(conflicts))
		}
		rows = rows[:0:0]
		for _, id := range conflicts {
			if attempt+1 >= maxRetries {
				failed = append(failed, failedRow{id, "conflict", fmt.Sprintf("changed by the application during each of %d attempts; run again", maxRetries)})
				continue
			}
			r, err := s.Get(ctx, id)
			if errors.Is(err, store.ErrNotFound) {
				continue // deleted meanwhile: nothing to rewrap
			}
			if err != nil {
				return n, retried, failed, err
			}
			rows = append(rows, r)
		}
		if len(rows) == 0 {
			return n, retried, failed, nil
		}
		// A retry is not paced: it is a few rows, and waiting would make
		// it lose to the application's next update again.
		var live *api.LiveLatency
		if res, live, err = c.d.Rewrap(ctx, rewrapItems(rows)); err != nil {
			return n, retried, failed, err
		}
		pc.observe(live)
	}
}

// jsonProgress writes a JSON line of progress at most once a second, for
// a log rather than a terminal.
type jsonProgress struct {
	w     io.Writer
	on    bool
	start time.Time
	last  time.Time
}

func (p *jsonProgress) update(done, rewrapped, failed, total int64, paced float64) {
	if !p.on || time.Since(p.last) < time.Second && done < total {
		return
	}
	p.last = time.Now()
	rate := float64(done) / max(time.Since(p.start).Seconds(), 1e-3)
	eta := 0.0
	if rate > 0 && total > done {
		eta = float64(total-done) / rate
	}
	b, _ := json.Marshal(map[string]any{"done": done, "total": total, "rewrapped": rewrapped, "failed": failed,
		"rows_per_s": int64(rate), "eta_s": int64(eta), "limit_rows_per_s": int64(paced)})
	fmt.Fprintln(p.w, string(b))
}

// retireChecked is keys retire --store: the table decides, not --count.
func (c *cli) retireChecked(ctx context.Context, dsn, id string, version uint32) (int64, error) {
	s, err := openStore(ctx, dsn)
	if err != nil {
		return 0, err
	}
	defer s.Close()
	holding, rows, err := s.Holding(ctx, id, version)
	if err != nil {
		return 0, err
	}
	if holding > 0 {
		return 0, fmt.Errorf("%d of the %d stored rows for %s still have a stanza at v%d or older: run custodyctl rewrap --postgres first; nothing was retired", holding, rows, id, version)
	}
	return rows, nil
}
