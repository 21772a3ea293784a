// compose-check loads a Compose file with the loader Docker Compose itself uses
// (compose-go), and every Dockerfile its services build with BuildKit's own parser and
// linter (the rules of `docker build --check`). It prints the resolved project and the
// parsed Dockerfiles as JSON, or exits 1 with the loader's or the parser's error.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/sirupsen/logrus"
)

// warnings collects what the loader only warns about (an unset variable becomes a blank
// string): the checker fails on them.
type warnings struct{ messages []string }

func (w *warnings) Levels() []logrus.Level {
	return []logrus.Level{logrus.WarnLevel, logrus.ErrorLevel}
}
func (w *warnings) Fire(e *logrus.Entry) error {
	w.messages = append(w.messages, e.Message)
	return nil
}

type command struct {
	Instruction string   `json:"instruction"`
	Source      string   `json:"source"`
	Args        []string `json:"args,omitempty"`
	From        string   `json:"from,omitempty"`
	User        string   `json:"user,omitempty"`
}

type stage struct {
	Name     string    `json:"name"`
	Base     string    `json:"base"`
	Commands []command `json:"commands"`
}

type warning struct {
	Rule    string `json:"rule"`
	Message string `json:"message"`
	Line    int    `json:"line"`
}

type dockerfile struct {
	Path     string    `json:"path"`
	Stages   []stage   `json:"stages"`
	Warnings []warning `json:"warnings"`
}

type report struct {
	Project     *types.Project        `json:"project"`
	Dockerfiles map[string]dockerfile `json:"dockerfiles"`
}

func main() {
	file := flag.String("f", "docker-compose.yml", "Compose file")
	dir := flag.String("project-directory", ".", "project directory (its .env is read)")
	flag.Parse()
	if err := run(*file, *dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(file, dir string) error {
	loaderWarnings := &warnings{}
	logrus.AddHook(loaderWarnings)
	logrus.SetOutput(io.Discard)
	// The options `docker compose` itself starts from: the OS environment, then the project's .env.
	opts, err := cli.NewProjectOptions(
		[]string{file},
		cli.WithWorkingDirectory(dir),
		cli.WithOsEnv,
		cli.WithEnvFiles(),
		cli.WithDotEnv,
		cli.WithConsistency(true),
		cli.WithResolvedPaths(true),
	)
	if err != nil {
		return err
	}
	project, err := opts.LoadProject(context.Background())
	if err != nil {
		return err
	}
	if len(loaderWarnings.messages) > 0 {
		return fmt.Errorf("%s", strings.Join(loaderWarnings.messages, "\n"))
	}
	out := report{Project: project, Dockerfiles: map[string]dockerfile{}}
	for name, svc := range project.Services {
		if svc.Build == nil {
			continue
		}
		path := svc.Build.Dockerfile
		if path == "" {
			path = "Dockerfile"
		}
		if !filepath.IsAbs(path) {
			path = filepath.Join(svc.Build.Context, path)
		}
		df, err := parseDockerfile(path)
		if err != nil {
			return fmt.Errorf("service %s: %s: %w", name, path, err)
		}
		out.Dockerfiles[name] = df
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

func parseDockerfile(path string) (dockerfile, error) {
	f, err := os.Open(path)
	if err != nil {
		return dockerfile{}, err
	}
	defer f.Close()
	ast, err := parser.Parse(f)
	if err != nil {
		return dockerfile{}, err
	}
	df := dockerfile{Path: path, Stages: []stage{}, Warnings: []warning{}}
	lint := linter.New(&linter.Config{
		Warn: func(rule, _, _, msg string, loc []parser.Range) {
			line := 0
			if len(loc) > 0 {
				line = loc[0].Start.Line
			}
			df.Warnings = append(df.Warnings, warning{Rule: rule, Message: msg, Line: line})
		},
	})
	stages, _, err := instructions.Parse(ast.AST, lint)
	if err != nil {
		return dockerfile{}, err
	}
	for _, w := range ast.Warnings {
		df.Warnings = append(df.Warnings, warning{Rule: "parser", Message: w.Short})
	}
	for _, s := range stages {
		st := stage{Name: s.Name, Base: s.BaseName, Commands: []command{}}
		for _, c := range s.Commands {
			cmd := command{Instruction: c.Name(), Source: fmt.Sprint(c)}
			switch v := c.(type) {
			case *instructions.CopyCommand:
				cmd.From = v.From
				cmd.Args = append(append([]string{}, v.SourcePaths...), v.DestPath)
			case *instructions.RunCommand:
				cmd.Args = v.CmdLine
			case *instructions.CmdCommand:
				cmd.Args = v.CmdLine
			case *instructions.EntrypointCommand:
				cmd.Args = v.CmdLine
			case *instructions.UserCommand:
				cmd.User = v.User
			}
			st.Commands = append(st.Commands, cmd)
		}
		df.Stages = append(df.Stages, st)
	}
	return df, nil
}
