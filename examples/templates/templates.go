// Package templates is pgrelay's worked example, the template-sharing app:
// organisations, their locations, users of four kinds and templates shared
// with locations, published as the topic "templates". Its SQL lives beside
// the core's and is installed by `migrate up` unless `--no-example` is
// given; the relay itself needs none of it.
package templates

import (
	"embed"
	"io/fs"
)

//go:embed migrations/*.sql triggers/*.sql
var files embed.FS

//go:embed seed.sql
var seed string

// Seed returns the SQL of the seed story: Acme (org-1) with Berlin, Paris
// and Rome (loc-1…3) and a user of every kind, and Globex (org-2) with Oslo
// (loc-9). `relay demo` inserts it, and so do the end-to-end tests: the
// story is written once.
func Seed() string { return seed }

// Migrations holds the app's versioned migrations. Their versions share one
// sequence with the core's, which they are applied among.
func Migrations() fs.FS { return sub("migrations") }

// Triggers holds the app's repeatable definitions: its audience rule as a
// topic, and the triggers that keep filters current.
func Triggers() fs.FS { return sub("triggers") }

func sub(dir string) fs.FS {
	f, err := fs.Sub(files, dir)
	if err != nil {
		// dir is one of the embedded directories above.
		panic(err)
	}
	return f
}
