/* message/internal_html2text.h — HTML to plain text for body-plain when a message has only HTML (SPEC §3).
 * Internal to message/ (and its unit test). */
#ifndef INLET_MESSAGE_INTERNAL_HTML2TEXT_H
#define INLET_MESSAGE_INTERNAL_HTML2TEXT_H

#include <stddef.h>

/* One pass over `len` bytes of UTF-8 HTML (a bounded state machine, no DOM):
 *  - tags removed; comments, <!DOCTYPE>, <?...?> dropped;
 *  - the contents of script, style and title dropped;
 *  - entities decoded: the HTML 4 Latin-1 set, the common typographic ones (&hellip; &mdash;
 *    &rsquo; ...), and numeric &#NN; / &#xHH; (invalid code points become U+FFFD);
 *  - <br> is a line break; p, h1-h6, blockquote, ul, ol, table, pre, hr end a paragraph (blank
 *    line); div, li, tr, dt, dd and the other block elements end a line; td/th separate with a space;
 *  - whitespace outside <pre> collapsed to one space; no leading or trailing blank lines, no
 *    more than one blank line in a row; &nbsp; is a space that is kept;
 *  - lines end with "\n".
 * Returns a g_malloc'd (malloc'd) NUL-terminated string, never NULL. */
char *msg_html_to_text(const char *html, size_t len);

#endif
