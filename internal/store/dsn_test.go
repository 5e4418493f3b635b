package store

import (
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

func TestHasPassword(t *testing.T) {
	for dsn, want := range map[string]bool{
		"host=/run/postgresql dbname=app":                   false,
		"host=/run/postgresql dbname=app password=hunter2":  true,
		"password = x host=h":                               true, // libpq allows spaces around "="
		"host=h password\t=\tx":                             true,
		"postgres://app@db.example/app":                     false,
		"postgres://app:hunter2@db.example/app":             true,
		"postgresql://db.example/app?password=hunter2":      true,
		"postgres://app:@db.example/app":                    true, // an empty password is still one in argv
		"host=h user=app sslmode=verify-full dbname=ledger": false,
	} {
		if got := hasPassword(dsn); got != want {
			t.Errorf("hasPassword(%q) = %v, want %v", dsn, got, want)
		}
	}
}

// FuzzHasPassword: whatever DSN hasPassword lets through, pgconn finds no
// password in it (with no passfile and no PGPASSWORD to add one).
func FuzzHasPassword(f *testing.F) {
	for _, s := range []string{"host=h dbname=d", "password=x", "postgres://u:p@h/d", "postgres://h/d?password=p", "host='a b' password='c d'", "user=u\tpassword=p", "host=h password =x", "password\n=x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, dsn string) {
		t.Setenv("PGPASSWORD", "")
		t.Setenv("PGPASSFILE", "/nonexistent")
		t.Setenv("PGSERVICEFILE", "/nonexistent")
		if hasPassword(dsn) {
			return
		}
		cfg, err := pgconn.ParseConfig(dsn)
		if err == nil && cfg.Password != "" {
			t.Fatalf("hasPassword(%q) = false, but pgconn reads password %q from it", dsn, cfg.Password)
		}
	})
}
