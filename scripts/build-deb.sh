#!/bin/sh
# Build dist/tetrad_<version>_all.deb with debhelper and dh-python from the
# checkout's files (tracked, plus untracked ones that are not ignored), then
# run lintian on it.  Installs the build tools when missing (needs root then).
set -eu
cd "$(dirname "$0")/.."

tools="debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools python3-wheel lintian"
missing=""
for p in $tools; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "build-deb: installing$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi

version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' tetrad/__init__.py)
changelog=$(dpkg-parsechangelog -l packaging/deb/debian/changelog -S Version)
if [ "$version" != "$changelog" ]; then
    echo "build-deb: tetrad/__init__.py says $version but packaging/deb/debian/changelog" \
         "says $changelog: add a changelog entry" >&2
    exit 1
fi

build=build/deb
src=$build/tetrad-$version
rm -rf "$build"
mkdir -p "$src" dist
git ls-files -z --cached --others --exclude-standard | tar -c --null -T - | tar -x -C "$src"
cp -r packaging/deb/debian "$src/debian"
cp packaging/systemd/tetrad.service "$src/debian/tetrad.service"
# Debian's own python3, whatever else is first on PATH (pyenv, a virtualenv)
(cd "$src" && PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -b -us -uc >../build.log 2>&1) ||
    { tail -n 40 "$build/build.log" >&2; exit 1; }
deb=tetrad_${version}_all.deb
mv "$build/$deb" dist/
# Errors fail the build; warnings are shown.
PATH=/usr/sbin:/usr/bin:/sbin:/bin lintian --fail-on error "dist/$deb"
echo "dist/$deb"
