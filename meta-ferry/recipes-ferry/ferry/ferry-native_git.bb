SUMMARY = "Ferry's CI and operator command, for the build host"
DESCRIPTION = "The ferry command (ferry commit, ferry log, ...) built for the build host, \
               used by the ferry-commit image class to commit an image's root file system."

SECTION = "devel"

require ferry-source.inc
require ferry-crates.inc

SKIP_RECIPE[ferry-native] = "${FERRY_SRCREV_UNSET}${@ferry_rust_too_old(d)}"

inherit cargo
inherit_defer native

# The repository is RocksDB: librocksdb-sys compiles it with the host's C++ compiler and
# generates its bindings with bindgen, which loads libclang (meta-clang's clang-native).
# To skip this recipe, point FERRY_NATIVE_BIN at a `ferry` built on the host instead.
DEPENDS += "clang-native"
export LIBCLANG_PATH = "${STAGING_LIBDIR_NATIVE}"

CARGO_BUILD_FLAGS += "-p ferry-publisher --bin ferry"

do_install () {
    install -d ${D}${bindir}
    install -m 0755 ${B}/target/${CARGO_TARGET_SUBDIR}/ferry ${D}${bindir}/ferry
}
