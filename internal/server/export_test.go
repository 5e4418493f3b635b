package server

import (
	"context"
	"net"
)

// SetBeforeRename sets the hook Listen runs just before it renames the
// socket onto its path (nil: none).
func SetBeforeRename(f func(path string)) { beforeRename = f }

// ServeWithContext serves ln as Serve does, with ctx as the base context of
// every connection (tests: one that carries a WithPeer identity, which the
// socket's SO_PEERCRED must override).
func ServeWithContext(s *Server, ln net.Listener, ctx context.Context) error {
	s.http.BaseContext = func(net.Listener) context.Context { return ctx }
	return s.Serve(ln)
}

// RouteOps are the access-log operation names of the route table.
func RouteOps() []string {
	var ops []string
	for _, rt := range (&Server{}).routes() {
		ops = append(ops, rt.op)
	}
	return ops
}
