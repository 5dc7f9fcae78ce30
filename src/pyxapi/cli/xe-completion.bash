# bash completion for xe (pyxapi): commands, parameter names, and values (VM, host and SR
# names and uuids, field names, enum values) fetched from the daemon.
# `make run` installs it; or: source src/pyxapi/cli/xe-completion.bash

_xe() {
    local line="${COMP_LINE:0:$COMP_POINT}"
    local IFS=$'\n'
    local answers
    answers=$(xe --complete "$line" 2>/dev/null) || return 0
    COMPREPLY=()
    # xe answers whole words ("vm=web1"); bash replaces only what follows the last word
    # break it knows (usually = and :), so drop what it keeps.
    local word="${line##*[[:space:]]}" prefix="" i=0 ch
    while ((i < ${#word})); do
        ch="${word:i:1}"
        [[ "$COMP_WORDBREAKS" == *"$ch"* ]] && prefix="${word:0:i+1}"
        ((i++))
    done
    local a
    for a in $answers; do
        [[ -n "$prefix" && "$a" == "$prefix"* ]] && a="${a#"$prefix"}"
        COMPREPLY+=("$a")
    done
    if ((${#COMPREPLY[@]} == 1)) && [[ "${COMPREPLY[0]}" == *= ]]; then
        compopt -o nospace 2>/dev/null
    fi
    return 0
}
complete -o default -F _xe xe
