package server_test

// The PostgreSQL store (internal/store, docs/store.md) against a real
// PostgreSQL server (pgtest) and a real daemon on its socket, driven by
// the custodyctl binary as an operator would: put and get, find by public
// columns, a rotation's backlog, rewrap in place while the application
// keeps updating rows, retire checked against the table, a tampered row, a
// kill -9 halfway and the database going away mid-run.

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"custody/internal/envelope"
	"custody/internal/store"
	"custody/internal/store/pgtest"
	"custody/internal/testutil"
)

// storeFixture is a daemon, a database with the schema and n rows for
// client-a and miner-b, and a custodyctl runner (as root, the operator).
type storeFixture struct {
	h   *harness
	dsn string
	db  *store.Store
}

func newStoreFixture(t *testing.T, pg *pgtest.Server, n int) *storeFixture {
	t.Helper()
	f := &storeFixture{h: newHarness(t), dsn: pg.NewDatabase(t)}
	f.h.register("client-a", "miner-b")
	f.ctl(t, 0, "", "store", "init", "--postgres", f.dsn)
	var err error
	if f.db, err = store.Open(context.Background(), f.dsn); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.db.Close)
	for i := range n {
		f.put(t, fmt.Sprintf("tx-%04d", i))
	}
	return f
}

// put seals a row through the daemon and stores it with the store API
// (custodyctl store put is tested on its own below).
func (f *storeFixture) put(t *testing.T, txid string) {
	t.Helper()
	env, err := base64.RawURLEncoding.DecodeString(f.h.seal(txid, "client-a", "miner-b"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.db.Put(context.Background(), store.Row{TransactionID: txid, JobID: "job-" + txid, Status: "completed", Envelope: env}); err != nil {
		t.Fatal(err)
	}
}

// ctl runs custodyctl as root and fails unless it exits want.
func (f *storeFixture) ctl(t *testing.T, want int, stdin string, args ...string) string {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "custodyctl"), append([]string{"--socket", f.h.socket}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	if code != want {
		t.Fatalf("custodyctl %s: exit %d, want %d\n%s", strings.Join(args, " "), code, want, out.String())
	}
	return out.String()
}

// stanzaVersion is the key version of participant's stanza in txid's row.
func (f *storeFixture) stanzaVersion(t *testing.T, txid, participant string) uint32 {
	t.Helper()
	r, err := f.db.Get(context.Background(), txid)
	if err != nil {
		t.Fatal(err)
	}
	e, err := envelope.Parse(r.Envelope)
	if err != nil {
		t.Fatal(err)
	}
	i, err := e.ParticipantStanza(participant)
	if err != nil {
		t.Fatal(err)
	}
	return e.Header.Stanzas[i].KeyVersion
}

func TestStorePutGetFind(t *testing.T) {
	f := newStoreFixture(t, pgtest.Shared(t), 0)
	req := `{"transaction_id":"tx-cli","job_id":"job-7","public_data":{"status":"completed"},"confidential":{"amount":"42","settlement_details":"IBAN DE00"},"participants":["client-a","miner-b"]}`
	out := f.ctl(t, 0, req, "store", "put", "--postgres", f.dsn, "--status", "settled", "-")
	if !strings.Contains(out, "stored transaction tx-cli") {
		t.Fatal(out)
	}
	f.ctl(t, 1, req, "store", "put", "--postgres", f.dsn, "-") // the id is taken
	out = f.ctl(t, 0, "", "store", "get", "tx-cli", "--postgres", f.dsn, "--as", "client-a", "--purpose", "settlement")
	if !strings.Contains(out, `amount: "42"`) || strings.Contains(out, "IBAN") || !strings.Contains(out, `status "settled"`) {
		t.Fatalf("store get for settlement:\n%s", out)
	}
	out = f.ctl(t, 1, "", "store", "get", "tx-cli", "--postgres", f.dsn, "--as", "client-a", "--purpose", "marketing")
	if !strings.Contains(out, "purpose_denied") {
		t.Fatal(out)
	}
	f.put(t, "tx-other")
	out = f.ctl(t, 0, "", "store", "find", "--postgres", f.dsn, "--job", "job-7")
	if !strings.Contains(out, "tx-cli") || strings.Contains(out, "tx-other") || !strings.Contains(out, "1 rows") {
		t.Fatalf("find by job:\n%s", out)
	}
	out = f.ctl(t, 0, "", "store", "find", "--postgres", f.dsn, "--status", "completed")
	if !strings.Contains(out, "tx-other") || strings.Contains(out, "tx-cli") {
		t.Fatalf("find by status:\n%s", out)
	}
	// A password in the DSN would sit in argv: refused before connecting.
	out = f.ctl(t, 2, "", "store", "status", "--postgres", "postgres://u:secret@localhost/db")
	if !strings.Contains(out, "passfile") || strings.Contains(out, "u:secret") {
		t.Fatalf("DSN with a password:\n%s", out)
	}
	// Someone with write access to the table swaps another transaction's
	// envelope into a row: store get names the row's id, and the daemon
	// refuses to open it as that transaction.
	conn, err := pgx.Connect(context.Background(), f.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(), `UPDATE confidential_transactions SET envelope = (SELECT envelope FROM confidential_transactions WHERE transaction_id = 'tx-other') WHERE transaction_id = 'tx-cli'`); err != nil {
		t.Fatal(err)
	}
	out = f.ctl(t, 1, "", "store", "get", "tx-cli", "--postgres", f.dsn, "--as", "client-a", "--purpose", "dispute")
	if !strings.Contains(out, "transaction_mismatch") || strings.Contains(out, "amount") {
		t.Fatalf("store get of a swapped envelope:\n%s", out)
	}
	// A row whose envelope is another transaction's is refused by Put.
	env, _ := base64.RawURLEncoding.DecodeString(f.h.seal("tx-real", "client-a"))
	if err := f.db.Put(context.Background(), store.Row{TransactionID: "tx-fake", JobID: "j", Envelope: env}); err == nil {
		t.Fatal("Put stored an envelope under another transaction id")
	}
}

// TestStoreRotateRewrapRetire: rotate → status shows the backlog → retire
// is refused by the table → rewrap in place while the application updates
// rows → no backlog, every application update kept → retire checked
// against the table → old rows open with the new version.
func TestStoreRotateRewrapRetire(t *testing.T) {
	const rows = 120
	f := newStoreFixture(t, pgtest.Shared(t), rows)
	f.ctl(t, 0, "", "keys", "rotate", "client-a")
	out := f.ctl(t, 0, "", "store", "status", "--postgres", f.dsn)
	if !strings.Contains(out, fmt.Sprintf("rows needing rewrap: %d", rows)) || !strings.Contains(out, "older than active") {
		t.Fatalf("status after rotate:\n%s", out)
	}
	out = f.ctl(t, 1, "", "keys", "retire", "client-a", "1", "--store", f.dsn)
	if !strings.Contains(out, fmt.Sprintf("%d of the %d stored rows for client-a", rows, rows)) {
		t.Fatalf("retire before rewrap:\n%s", out)
	}

	// The application keeps changing rows' status during the rewrap.
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var mu sync.Mutex
	last := map[string]string{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for n := 0; ctx.Err() == nil; n++ {
			id := fmt.Sprintf("tx-%04d", rand.IntN(rows))
			st := fmt.Sprintf("update-%d", n)
			if err := f.db.SetStatus(context.Background(), id, st); err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			last[id] = st
			mu.Unlock()
			time.Sleep(time.Millisecond) // let time pass: an application's pace, not a measurement
		}
	}()
	out = f.ctl(t, 0, "", "rewrap", "--postgres", f.dsn, "--batch", "10")
	stop()
	wg.Wait()
	if !strings.Contains(out, fmt.Sprintf("%d rows rewrapped in place", rows)) || !strings.Contains(out, "0 rows still need a rewrap") {
		t.Fatalf("rewrap --postgres:\n%s", out)
	}
	for id, st := range last {
		r, err := f.db.Get(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if r.Status != st {
			t.Errorf("%s: status %q, the application last wrote %q: an update was overwritten", id, r.Status, st)
		}
	}
	for i := 0; i < rows; i += 17 {
		if v := f.stanzaVersion(t, fmt.Sprintf("tx-%04d", i), "client-a"); v != 2 {
			t.Errorf("tx-%04d: client-a stanza at v%d after the rewrap", i, v)
		}
	}
	out = f.ctl(t, 0, "", "store", "status", "--postgres", f.dsn)
	if !strings.Contains(out, "rows needing rewrap: 0") {
		t.Fatalf("status after rewrap:\n%s", out)
	}
	f.ctl(t, 0, "", "keys", "retire", "client-a", "1", "--store", f.dsn)
	if e := f.h.rec.last(); e.Operation != "key.retire" || !strings.Contains(e.Detail, fmt.Sprintf("%d envelopes", rows)) {
		t.Errorf("retire's entry: %+v; want the store's row count as the rewrapped count", e)
	}
	out = f.ctl(t, 0, "", "store", "get", "tx-0007", "--postgres", f.dsn, "--as", "client-a", "--purpose", "settlement")
	if !strings.Contains(out, `amount: "1000"`) {
		t.Fatalf("a rewrapped row after retiring v1:\n%s", out)
	}
}

// TestStoreTamperedRow: a row whose envelope was altered in the database
// is reported and skipped; the others are rewrapped; the run says what is
// left and exits 1.
func TestStoreTamperedRow(t *testing.T) {
	f := newStoreFixture(t, pgtest.Shared(t), 10)
	r, err := f.db.Get(context.Background(), "tx-0003")
	if err != nil {
		t.Fatal(err)
	}
	e, _ := envelope.Parse(r.Envelope)
	e.Header.JobID = "job-rewritten" // parses, but the header signature no longer verifies
	if _, err := f.db.Replace(context.Background(), []store.Replacement{{TransactionID: "tx-0003", RowVersion: r.RowVersion, Envelope: e.Marshal()}}); err != nil {
		t.Fatal(err)
	}
	f.ctl(t, 0, "", "keys", "rotate", "miner-b")
	out := f.ctl(t, 1, "", "rewrap", "--postgres", f.dsn, "--batch", "20")
	if !strings.Contains(out, "9 rows rewrapped in place") || !strings.Contains(out, "tx-0003: signature_invalid") || !strings.Contains(out, "1 rows still need a rewrap") {
		t.Fatalf("rewrap with a tampered row:\n%s", out)
	}
	if v := f.stanzaVersion(t, "tx-0003", "miner-b"); v != 1 {
		t.Errorf("the tampered row was rewritten (miner-b v%d)", v)
	}
}

// TestStoreRewrapKilledAndResumed: kill -9 of custodyctl halfway through
// an in-place rewrap loses no row and rewraps none twice: the next run
// finishes what is left, and every row's row_version went up exactly once.
func TestStoreRewrapKilledAndResumed(t *testing.T) {
	const rows = 200
	f := newStoreFixture(t, pgtest.Shared(t), rows)
	before := map[string]int64{}
	for _, r := range f.rows(t) {
		before[r.TransactionID] = r.RowVersion
	}
	f.ctl(t, 0, "", "keys", "rotate", "client-a")
	cmd := exec.Command(filepath.Join(binDir, "custodyctl"), "--socket", f.h.socket, "rewrap", "--postgres", f.dsn, "--batch", "10", "--rate", "100")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	active := store.Active{Participants: map[string]uint32{"client-a": 2, "miner-b": 1}, Escrow: 1}
	if !testutil.Poll(30*time.Second, func() bool {
		n, err := f.db.Backlog(context.Background(), active)
		return err == nil && n <= rows*2/3
	}) {
		t.Fatal("no third of the rows rewrapped within 30s")
	}
	cmd.Process.Kill() // SIGKILL: no cleanup of any kind
	cmd.Wait()
	left, err := f.db.Backlog(context.Background(), active)
	if err != nil || left == 0 || left == rows {
		t.Fatalf("after kill -9: backlog %d (%v); want part done", left, err)
	}
	out := f.ctl(t, 0, "", "rewrap", "--postgres", f.dsn, "--batch", "10")
	if !strings.Contains(out, fmt.Sprintf("%d rows rewrapped in place", left)) {
		t.Fatalf("resumed run:\n%s", out)
	}
	for _, r := range f.rows(t) {
		if r.RowVersion != before[r.TransactionID]+1 {
			t.Errorf("%s: row_version %d → %d: rewrapped %d times", r.TransactionID, before[r.TransactionID], r.RowVersion, r.RowVersion-before[r.TransactionID])
		}
	}
}

// TestStoreDatabaseGoesAway: PostgreSQL stops mid-run: a clear error that
// says the run can be resumed; after the restart the same command
// finishes.
func TestStoreDatabaseGoesAway(t *testing.T) {
	pg := pgtest.Private(t)
	f := newStoreFixture(t, pg, 150)
	f.ctl(t, 0, "", "keys", "rotate", "miner-b")
	cmd := exec.Command(filepath.Join(binDir, "custodyctl"), "--socket", f.h.socket, "rewrap", "--postgres", f.dsn, "--batch", "10", "--rate", "100")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	active := store.Active{Participants: map[string]uint32{"client-a": 1, "miner-b": 2}, Escrow: 1}
	if !testutil.Poll(30*time.Second, func() bool {
		n, err := f.db.Backlog(context.Background(), active)
		return err == nil && n < 140
	}) {
		t.Fatal("no rows rewrapped within 30s")
	}
	pg.Halt()
	err := cmd.Wait()
	if err == nil || !strings.Contains(out.String(), "run the same command again to continue") {
		t.Fatalf("rewrap with the database gone: %v\n%s", err, out.String())
	}
	if err := pg.Launch(); err != nil {
		t.Fatal(err)
	}
	final := f.ctl(t, 0, "", "rewrap", "--postgres", f.dsn, "--batch", "20")
	if !strings.Contains(final, "0 rows still need a rewrap") {
		t.Fatalf("after the restart:\n%s", final)
	}
}

// rows reads every row.
func (f *storeFixture) rows(t *testing.T) []store.Row {
	t.Helper()
	rs, err := f.db.Find(context.Background(), store.Filter{Limit: 100000})
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

// TestStoreReplaceAtVersionRead: the write a rewrap makes lands only at the
// row_version it read. After an application's update it is refused (the
// id comes back as a conflict), the row keeps the application's change;
// at the current version it lands.
func TestStoreReplaceAtVersionRead(t *testing.T) {
	f := newStoreFixture(t, pgtest.Shared(t), 1)
	ctx := context.Background()
	read, err := f.db.Get(ctx, "tx-0000")
	if err != nil {
		t.Fatal(err)
	}
	if err := f.db.SetStatus(ctx, "tx-0000", "disputed"); err != nil {
		t.Fatal(err)
	}
	conflicts, err := f.db.Replace(ctx, []store.Replacement{{TransactionID: "tx-0000", RowVersion: read.RowVersion, Envelope: read.Envelope}})
	if err != nil || len(conflicts) != 1 || conflicts[0] != "tx-0000" {
		t.Fatalf("replace at a stale version: conflicts %v, %v", conflicts, err)
	}
	now, _ := f.db.Get(ctx, "tx-0000")
	if now.Status != "disputed" || now.RowVersion != read.RowVersion+1 {
		t.Fatalf("after the refused write: status %q, row_version %d (read at %d)", now.Status, now.RowVersion, read.RowVersion)
	}
	if conflicts, err := f.db.Replace(ctx, []store.Replacement{{TransactionID: "tx-0000", RowVersion: now.RowVersion, Envelope: now.Envelope}}); err != nil || len(conflicts) != 0 {
		t.Fatalf("replace at the current version: conflicts %v, %v", conflicts, err)
	}
	after, _ := f.db.Get(ctx, "tx-0000")
	if after.RowVersion != now.RowVersion+1 || after.Status != "disputed" {
		t.Fatalf("after the write: row_version %d, status %q", after.RowVersion, after.Status)
	}
	// The same row twice in one call is refused before anything is written.
	twice := store.Replacement{TransactionID: "tx-0000", RowVersion: after.RowVersion, Envelope: after.Envelope}
	if _, err := f.db.Replace(ctx, []store.Replacement{twice, twice}); err == nil {
		t.Fatal("two replacements for one row in a call: no error")
	}
	if again, _ := f.db.Get(ctx, "tx-0000"); again.RowVersion != after.RowVersion {
		t.Fatalf("a refused call wrote: row_version %d, was %d", again.RowVersion, after.RowVersion)
	}
}
