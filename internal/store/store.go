// Package store keeps confidential transactions in PostgreSQL, as the
// reference schema (schema.sql, docs/store.md) lays them out: the public
// fields as columns, the envelope in its binary form, and the header facts
// a rotation needs (the escrow stanza's key version, one row per
// participant stanza) written in the same SQL transaction as the envelope,
// so that finding the rows that still need a rewrap never decrypts
// anything.
//
// The daemon never talks to the database: the application (custodyctl
// store) seals through the daemon and stores the envelope; custodyctl
// rewrap --postgres rewraps rows in place. Every write bumps row_version,
// and a rewrap replaces a row only at the version it read, so an
// application's concurrent update is never overwritten.
//
// A Store is safe for concurrent use.
package store

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"custody/internal/envelope"
)

//go:embed schema.sql
var schema string

var (
	// ErrNotFound: no row with that transaction id.
	ErrNotFound = errors.New("store: no such transaction")
	// ErrExists: a row with that transaction id exists.
	ErrExists = errors.New("store: transaction exists")
	// ErrPasswordInDSN: the DSN carries a password, which would sit in
	// argv; it belongs in a passfile (PGPASSFILE, ~/.pgpass).
	ErrPasswordInDSN = errors.New("store: the DSN carries a password: put it in a passfile (PGPASSFILE or ~/.pgpass) instead")
)

// Row is one confidential transaction as stored.
type Row struct {
	TransactionID string
	JobID         string
	Status        string
	PublicData    json.RawMessage
	Envelope      []byte // binary form
	RowVersion    int64
	CreatedAt     time.Time
	UpdatedAt     time.Time
}

// Store is a connection pool to one database holding the schema.
type Store struct{ pool *pgxpool.Pool }

// Open connects to dsn (a libpq URL or keyword/value string without a
// password) and checks that the server answers.
func Open(ctx context.Context, dsn string) (*Store, error) {
	if hasPassword(dsn) {
		return nil, ErrPasswordInDSN
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("store: DSN: %w", err)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("store: cannot reach PostgreSQL: %w", err)
	}
	return &Store{pool: pool}, nil
}

// hasPassword reports whether dsn may hold a password: in a URL a colon
// before the last "@", or the word "password" anywhere (a query parameter, a
// keyword). It reads the text rather than a parse, and errs on the side
// of refusing: a database named "password_db" is refused too, and a DSN
// it lets through never carries a password (FuzzHasPassword).
func hasPassword(dsn string) bool {
	for _, scheme := range []string{"postgres://", "postgresql://"} {
		if rest, ok := strings.CutPrefix(dsn, scheme); ok {
			// A colon anywhere before the last "@" may be userinfo's.
			if i := strings.LastIndex(rest, "@"); i >= 0 && strings.Contains(rest[:i], ":") {
				return true
			}
			return strings.Contains(rest, "password")
		}
	}
	return strings.Contains(dsn, "password")
}

// Close closes the pool.
func (s *Store) Close() { s.pool.Close() }

// Init creates the schema's tables and indexes where they are missing.
func (s *Store) Init(ctx context.Context) error {
	_, err := s.pool.Exec(ctx, schema)
	return err
}

// facts are the header facts of an envelope the schema keeps beside it.
type facts struct {
	version uint8
	escrow  uint32
	stanzas map[string]uint32 // participant → key version
}

// versionOffset is where the format version sits in every envelope's
// binary form: after the 12-byte magic (docs/envelope.md).
const versionOffset = 12

// factsOf parses an envelope (binary form) for its facts; it does not
// verify it (the daemon does, when it opens or rewraps it).
func factsOf(env []byte) (*envelope.Envelope, facts, error) {
	e, err := envelope.Parse(env)
	if err != nil {
		return nil, facts{}, err
	}
	f := facts{version: env[versionOffset], stanzas: map[string]uint32{}}
	for _, st := range e.Header.Stanzas {
		if st.Kind == envelope.StanzaEscrow {
			f.escrow = st.KeyVersion
		} else {
			f.stanzas[st.ParticipantID] = st.KeyVersion
		}
	}
	return e, f, nil
}

// writeFacts replaces the stanza rows of txid within tx.
func writeFacts(ctx context.Context, tx pgx.Tx, txid string, f facts) error {
	if _, err := tx.Exec(ctx, `DELETE FROM confidential_transaction_stanzas WHERE transaction_id = $1`, txid); err != nil {
		return err
	}
	for p, v := range f.stanzas {
		if _, err := tx.Exec(ctx, `INSERT INTO confidential_transaction_stanzas (transaction_id, participant, key_version) VALUES ($1, $2, $3)`, txid, p, int64(v)); err != nil {
			return err
		}
	}
	return nil
}

// Put inserts a new row and its facts in one SQL transaction. The row's
// transaction id must be the envelope's.
func (s *Store) Put(ctx context.Context, r Row) error {
	e, f, err := factsOf(r.Envelope)
	if err != nil {
		return err
	}
	if e.Header.TransactionID != r.TransactionID {
		return fmt.Errorf("store: the envelope is transaction %q, not %q", e.Header.TransactionID, r.TransactionID)
	}
	if len(r.PublicData) == 0 {
		r.PublicData = json.RawMessage(`{}`)
	}
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO confidential_transactions
			(transaction_id, job_id, status, public_data, envelope, envelope_version, escrow_key_version)
			VALUES ($1, $2, $3, $4, $5, $6, $7)`,
			r.TransactionID, r.JobID, r.Status, []byte(r.PublicData), r.Envelope, int16(f.version), int64(f.escrow))
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "23505" { // unique_violation
			return fmt.Errorf("%w: %s", ErrExists, r.TransactionID)
		}
		if err != nil {
			return err
		}
		return writeFacts(ctx, tx, r.TransactionID, f)
	})
}

const rowColumns = `transaction_id, job_id, status, public_data, envelope, row_version, created_at, updated_at`

func scanRow(row pgx.Row) (Row, error) {
	var r Row
	var pub []byte
	err := row.Scan(&r.TransactionID, &r.JobID, &r.Status, &pub, &r.Envelope, &r.RowVersion, &r.CreatedAt, &r.UpdatedAt)
	r.PublicData = pub
	return r, err
}

// Get reads one row.
func (s *Store) Get(ctx context.Context, txid string) (Row, error) {
	r, err := scanRow(s.pool.QueryRow(ctx, `SELECT `+rowColumns+` FROM confidential_transactions WHERE transaction_id = $1`, txid))
	if errors.Is(err, pgx.ErrNoRows) {
		return Row{}, fmt.Errorf("%w: %s", ErrNotFound, txid)
	}
	return r, err
}

// Filter selects rows by their public fields; empty fields match all.
type Filter struct {
	JobID, Status string
	Limit         int // 0: 100
}

// Find lists rows by public fields, oldest first.
func (s *Store) Find(ctx context.Context, f Filter) ([]Row, error) {
	if f.Limit <= 0 {
		f.Limit = 100
	}
	rows, err := s.pool.Query(ctx, `SELECT `+rowColumns+` FROM confidential_transactions
		WHERE ($1 = '' OR job_id = $1) AND ($2 = '' OR status = $2)
		ORDER BY created_at, transaction_id LIMIT $3`, f.JobID, f.Status, f.Limit)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Row, error) { return scanRow(r) })
}

// SetStatus is an application's update of a public field: it bumps
// row_version, as every write does.
func (s *Store) SetStatus(ctx context.Context, txid, status string) error {
	tag, err := s.pool.Exec(ctx, `UPDATE confidential_transactions SET status = $2, row_version = row_version + 1, updated_at = now() WHERE transaction_id = $1`, txid, status)
	if err == nil && tag.RowsAffected() == 0 {
		err = fmt.Errorf("%w: %s", ErrNotFound, txid)
	}
	return err
}

// Count is how many rows hold a stanza of one key version: a
// participant's (Participant set) or the escrow key's (Escrow).
type Count struct {
	Participant string
	Escrow      bool
	KeyVersion  uint32
	Rows        int64
}

// Counts tallies the rows per participant and key version, and per escrow
// key version, ordered.
func (s *Store) Counts(ctx context.Context) ([]Count, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT participant, false, key_version, count(*) FROM confidential_transaction_stanzas GROUP BY participant, key_version
		UNION ALL
		SELECT '', true, escrow_key_version, count(*) FROM confidential_transactions GROUP BY escrow_key_version
		ORDER BY 2, 1, 3`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Count, error) {
		var c Count
		var v int64
		err := r.Scan(&c.Participant, &c.Escrow, &v, &c.Rows)
		c.KeyVersion = uint32(v)
		return c, err
	})
}

// Active is the key versions new envelopes are sealed to (the daemon's
// GET /v1/keys): a row with a stanza below them needs a rewrap.
type Active struct {
	Participants map[string]uint32
	Escrow       uint32
}

// dueQuery selects the ids of rows due for a rewrap: a participant stanza
// below its active version (an index range scan per participant) or the
// escrow stanza below the active escrow version.
const dueQuery = `
	SELECT s.transaction_id FROM unnest($1::text[], $2::bigint[]) AS a(participant, active)
		JOIN confidential_transaction_stanzas s ON s.participant = a.participant AND s.key_version < a.active
	UNION
	SELECT transaction_id FROM confidential_transactions WHERE escrow_key_version < $3`

func (a Active) args() ([]string, []int64, int64) {
	var ps []string
	var vs []int64
	for p, v := range a.Participants {
		ps, vs = append(ps, p), append(vs, int64(v))
	}
	return ps, vs, int64(a.Escrow)
}

// Backlog counts the rows due for a rewrap.
func (s *Store) Backlog(ctx context.Context, a Active) (int64, error) {
	ps, vs, esc := a.args()
	var n int64
	err := s.pool.QueryRow(ctx, `SELECT count(*) FROM (`+dueQuery+`) due`, ps, vs, esc).Scan(&n)
	return n, err
}

// Due returns up to n rows due for a rewrap whose transaction id sorts
// after after, in id order (a keyset page: a caller continues from the
// last id it got).
func (s *Store) Due(ctx context.Context, a Active, after string, n int) ([]Row, error) {
	ps, vs, esc := a.args()
	rows, err := s.pool.Query(ctx, `SELECT `+prefixed("t.", rowColumns)+` FROM confidential_transactions t
		JOIN (`+dueQuery+`) due USING (transaction_id)
		WHERE t.transaction_id > $4 ORDER BY t.transaction_id LIMIT $5`, ps, vs, esc, after, n)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Row, error) { return scanRow(r) })
}

func prefixed(p, cols string) string {
	parts := strings.Split(cols, ", ")
	for i := range parts {
		parts[i] = p + parts[i]
	}
	return strings.Join(parts, ", ")
}

// Replacement is a new envelope for a row read at RowVersion.
type Replacement struct {
	TransactionID string
	RowVersion    int64
	Envelope      []byte
}

// Replace writes each replacement and its facts, all in one SQL
// transaction, each only if its row is still at the version read. It
// returns the ids of the rows that changed meanwhile (left as they are:
// read them again and retry). On error nothing was written; two
// replacements for one transaction in a call are an error.
func (s *Store) Replace(ctx context.Context, rs []Replacement) (conflicts []string, err error) {
	type parsed struct {
		r Replacement
		f facts
	}
	ps := make([]parsed, len(rs))
	seen := make(map[string]bool, len(rs))
	for i, r := range rs {
		if seen[r.TransactionID] {
			return nil, fmt.Errorf("store: two replacements for %s in one call", r.TransactionID)
		}
		seen[r.TransactionID] = true
		e, f, err := factsOf(r.Envelope)
		if err != nil {
			return nil, fmt.Errorf("store: replacement for %s: %w", r.TransactionID, err)
		}
		if e.Header.TransactionID != r.TransactionID {
			return nil, fmt.Errorf("store: replacement for %s is transaction %q", r.TransactionID, e.Header.TransactionID)
		}
		ps[i] = parsed{r, f}
	}
	// One statement for the whole page, in one SQL transaction: each row is
	// updated only at the version read, and its stanza rows follow only if
	// it was (a rewrap keeps the participant list, so an upsert replaces
	// every stanza row). Set-based: PostgreSQL plans and starts one
	// statement, not one per row.
	var (
		ids, envs              = make([]string, len(ps)), make([][]byte, len(ps))
		rowVersions, escrows   = make([]int64, len(ps)), make([]int64, len(ps))
		versions               = make([]int16, len(ps))
		stanzaIDs, stanzaNames []string
		stanzaVersions         []int64
	)
	for i, p := range ps {
		ids[i], rowVersions[i], envs[i] = p.r.TransactionID, p.r.RowVersion, p.r.Envelope
		versions[i], escrows[i] = int16(p.f.version), int64(p.f.escrow)
		for n, v := range p.f.stanzas {
			stanzaIDs, stanzaNames, stanzaVersions = append(stanzaIDs, p.r.TransactionID), append(stanzaNames, n), append(stanzaVersions, int64(v))
		}
	}
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `WITH u AS (
				UPDATE confidential_transactions t
				SET envelope = x.env, envelope_version = x.ver, escrow_key_version = x.esc, row_version = t.row_version + 1, updated_at = now()
				FROM unnest($1::text[], $2::bigint[], $3::bytea[], $4::smallint[], $5::bigint[]) AS x(id, rv, env, ver, esc)
				WHERE t.transaction_id = x.id AND t.row_version = x.rv
				RETURNING t.transaction_id),
			s AS (
				INSERT INTO confidential_transaction_stanzas (transaction_id, participant, key_version)
				SELECT y.id, y.p, y.v FROM unnest($6::text[], $7::text[], $8::bigint[]) AS y(id, p, v) JOIN u ON u.transaction_id = y.id
				ON CONFLICT (transaction_id, participant) DO UPDATE SET key_version = EXCLUDED.key_version)
			SELECT transaction_id FROM u`,
			ids, rowVersions, envs, versions, escrows, stanzaIDs, stanzaNames, stanzaVersions)
		if err != nil {
			return err
		}
		updated, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		done := make(map[string]bool, len(updated))
		for _, id := range updated {
			done[id] = true
		}
		conflicts = nil
		for _, id := range ids {
			if !done[id] { // not updated: changed since it was read
				conflicts = append(conflicts, id)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return conflicts, nil
}

// Holding counts the rows whose stanza for participant is at version or
// below (escrow: participant "" and the escrow stanza), and all rows with
// a stanza for participant: what retiring that version would cut off, and
// how many rows were checked.
func (s *Store) Holding(ctx context.Context, participant string, version uint32) (holding, rows int64, err error) {
	if participant == "" {
		err = s.pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE escrow_key_version <= $1), count(*) FROM confidential_transactions`, int64(version)).Scan(&holding, &rows)
		return holding, rows, err
	}
	err = s.pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE key_version <= $2), count(*) FROM confidential_transaction_stanzas WHERE participant = $1`,
		participant, int64(version)).Scan(&holding, &rows)
	return holding, rows, err
}
