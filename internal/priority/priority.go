// Package priority marks bulk work (a rewrap of many envelopes) on its
// context, so that what many callers share can let live requests go first:
// the token's session pool (package hsm) and the access log's group commit
// (package auditlog). A context without the mark is a live request. Watch
// times live requests with and without bulk work running, for a bulk
// client to pace itself by.
package priority

import "context"

type backgroundKey struct{}

// Background marks ctx for bulk work that must not slow the others.
func Background(ctx context.Context) context.Context {
	return context.WithValue(ctx, backgroundKey{}, true)
}

// IsBackground reports whether ctx was marked by Background.
func IsBackground(ctx context.Context) bool {
	b, _ := ctx.Value(backgroundKey{}).(bool)
	return b
}
