/* message/internal_strip.h — reply stripping for stripped-text, stripped-signature and stripped-html
 * (SPEC §3).  Internal to the message module: message/parse.c calls these two functions.
 *
 * Plain text: the new reply is the text before the first quote (a `>` line, an attribution line
 * such as "On ... wrote:" followed by quoted text, Outlook's "-----Original Message-----" or
 * "From:/Sent:/To:/Subject:" block, in English, French, German and Spanish), without its
 * signature (after a "-- " or "--" line, or trailing "Sent from my iPhone" lines).  A forwarded
 * message ("---- Forwarded message ----", "Begin forwarded message:") is kept whole.
 * HTML: the first quote container (gmail_quote, blockquote type="cite" with the attribution
 * before it) is removed; from Outlook's reply header (divRplyFwdMsg, appendonsend, the
 * border-top div, an <hr> before "From:", "-----Original Message-----") to the end everything is
 * removed except the closing tags of the elements that were open; signature containers
 * (gmail_signature, moz-signature) are removed.  The rest of the HTML is kept byte for byte.
 *
 * Both are pure functions of their input, thread-safe, and take time linear in the input. */
#ifndef INLET_MESSAGE_INTERNAL_STRIP_H
#define INLET_MESSAGE_INTERNAL_STRIP_H

/* Reply stripping (SPEC §3 stripped-*): best effort, never fails, bounded time (linear in input).
 * Inputs are UTF-8 (never NULL); outputs are malloc'd UTF-8 strings (free()), never NULL. */
void msg_strip_text(const char *plain, char **text, char **signature);
char *msg_strip_html(const char *html);

#endif
